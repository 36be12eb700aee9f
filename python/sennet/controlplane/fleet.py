"""What the control plane currently knows about each agent, and counter-reset handling.

Agents send raw cumulative counters. They can go backwards (an agent restarted
without its pinned maps, a reboot), and exporting the raw value would make
Prometheus see a reset at an arbitrary point. Instead each series keeps
`total`: a monotonic sum of increases, where a drop below the last raw value
counts the new raw value as the increase since the reset. `rate()` and
`increase()` over `total` are then exact, and `total` survives control-plane
restarts because the writer stores it in the same transaction as the heartbeat.

SQLite's INTEGER is signed 64-bit while the proto's counters are uint64, so
both ends are bounded: `validate.py` refuses raw values above 2^63-1, and
`apply` refuses a heartbeat that would take a `total` past 2^63-1
(`TotalOverflow`) rather than wrap or clamp it. A total is therefore always
exact and never moves backwards; the writer answers that one heartbeat
INVALID_ARGUMENT naming the field. A real counter needs about three years at
100 million packets a second to get there, so in practice only a broken or
hostile agent does, and it harms nobody but itself. `apply` also refuses a
heartbeat that would give one agent more than `max_series` series
(`TooManySeries`), which bounds memory and /metrics cardinality per agent.

`AgentView` values are immutable; the writer replaces them only after commit,
so /metrics never shows a heartbeat that was not durable.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from sennet.controlplane import fleet_insights, image_report
from sennet.controlplane.fleet_insights import Telemetry
from sennet.controlplane.image_report import ImageReport
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

INTERFACE_FIELDS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
EVENTS = "events"
RINGBUF_DROPS = "ringbuf_drops"
AGENT_DROPPED = "agent_dropped"
MAX_TOTAL = (1 << 63) - 1  # SQLite INTEGER is signed 64-bit


class SeriesKey(NamedTuple):
    """Which of an agent's series: a family (`rx_packets`, `events`, ...) and a name in it.

    The name is the interface for interface families, the event kind for
    `events` and `ringbuf_drops`, "" for `agent_dropped`; for the flow, DNS
    and TCP families see `fleet_insights.py`. A tuple (compared
    and hashed in C) rather than a dataclass, because the exporter compares
    thousands of keys per scrape.
    """

    family: str
    name: str

    def stored(self) -> str:
        """The text form kept in SQLite's `series.key`: `rx_packets:eth0`, `agent_dropped:`."""
        return f"{self.family}:{self.name}"

    @classmethod
    def from_stored(cls, text: str) -> SeriesKey:
        """Inverse of `stored()` (a family never holds ':'; a name may)."""
        family, _, name = text.partition(":")
        return cls(family, name)


@functools.lru_cache(maxsize=8192)
def series_key(family: str, name: str) -> SeriesKey:
    """The `SeriesKey` of (family, name), made once per distinct key and then shared.

    A fold makes one key per series per heartbeat (about 150 with flow, DNS and
    TCP parts); building the NamedTuple in Python cost three times the lookup.
    A fleet has few distinct keys (its interface names, event kinds, bucket
    labels); a bounded cache only costs a rebuild beyond that.
    """
    return SeriesKey(family, name)


@functools.lru_cache(maxsize=256)
def _bucket_keys(family: str, bounds: tuple[float, ...]) -> tuple[SeriesKey, ...]:
    """The bucket series keys of one histogram family and bound list, made once per list."""
    return tuple(series_key(family, le) for le in fleet_insights.bucket_names(bounds))


class TotalOverflow(ValueError):
    """Storing this reading would take the series' total past `MAX_TOTAL`."""

    def __init__(self, key: SeriesKey, total: int, raw: int) -> None:
        super().__init__(f"{key.stored()}: total {total} + reading {raw} passes {MAX_TOTAL}")
        self.key = key
        self.total = total
        self.raw = raw


class TooManySeries(ValueError):
    """This heartbeat would give the agent more series than allowed; `key` is the first extra."""

    def __init__(self, key: SeriesKey, count: int, limit: int) -> None:
        super().__init__(f"{key.stored()}: series number {count}, at most {limit} allowed")
        self.key = key
        self.count = count
        self.limit = limit


class Series(NamedTuple):
    """One counter series: the last raw reading and the monotonic total.

    A tuple (built in C) rather than a frozen dataclass: a heartbeat with flow,
    DNS and TCP parts makes about 150 of these, and the dataclass's
    constructor was a tenth of the writer's time per heartbeat.
    """

    last_raw: int
    total: int


def advance(prev: Series | None, raw: int) -> tuple[Series, bool]:
    """Fold one raw cumulative reading into a series; the flag says a reset was seen."""
    if prev is None:
        return Series(raw, raw), False
    if raw >= prev.last_raw:
        return Series(raw, prev.total + raw - prev.last_raw), False
    return Series(raw, prev.total + raw), True


@dataclass(frozen=True)
class AgentView:
    agent_id: str
    hostname: str = ""
    agent_version: str = ""
    kernel_version: str = ""
    registered_at: float = 0.0
    last_heartbeat: float | None = None
    uptime_seconds: float = 0.0
    heartbeats: int = 0
    resets: int = 0
    series: Mapping[SeriesKey, Series] = field(default_factory=dict)
    # gauges of the latest heartbeat: flows, microbursts, top names (fleet_insights.py)
    telemetry: Telemetry | None = None
    # the appliance image and last update outcome, as last reported (image_report.py)
    image: ImageReport | None = None

    def raw_readings(self, req: pb.HeartbeatRequest) -> dict[SeriesKey, int]:
        """The raw cumulative values a heartbeat carries, by series key."""
        key = series_key
        out: dict[SeriesKey, int] = {}
        for itf in req.interfaces:
            for name in INTERFACE_FIELDS:
                out[key(name, itf.name)] = getattr(itf, name)
        for kind, count in req.events_by_kind.items():
            out[key(EVENTS, kind)] = count
        for kind, count in req.ringbuf_drops_by_kind.items():
            out[key(RINGBUF_DROPS, kind)] = count
        out[key(AGENT_DROPPED, "")] = req.events_dropped_by_agent
        for family, name, raw in fleet_insights.readings(req):
            out[key(family, name)] = raw
        for family, bounds, counts, total_ns in fleet_insights.histogram_readings(req):
            buckets = _bucket_keys(family, bounds)
            if len(buckets) != len(counts):  # validation refuses this first
                raise ValueError(f"{family}: {len(counts)} counts for {len(bounds)} bounds")
            out.update(zip(buckets, counts, strict=True))
            out[key(family + fleet_insights.SUM, "")] = total_ns
        return out

    def apply(
        self, req: pb.HeartbeatRequest, received_at: float, max_series: int | None = None
    ) -> tuple[AgentView, dict[SeriesKey, Series]]:
        """The view after `req`, and the series that changed (for the writer to store).

        Raises `TotalOverflow` or `TooManySeries` (nothing changes) when `req`
        cannot be folded in without breaking the bounds in the module docstring.
        """
        merged = dict(self.series)
        changed: dict[SeriesKey, Series] = {}
        resets = 0
        # `advance`, inlined: this loop runs for every series of every heartbeat
        for key, raw in self.raw_readings(req).items():
            prev = merged.get(key)
            if prev is None:
                new = Series(raw, raw)
                if raw > MAX_TOTAL:
                    raise TotalOverflow(key, 0, raw)
                if max_series is not None and len(merged) >= max_series:
                    raise TooManySeries(key, len(merged) + 1, max_series)
            else:
                last_raw, total = prev
                if raw == last_raw:
                    continue  # unchanged: nothing to store
                if raw > last_raw:
                    new = Series(raw, total + raw - last_raw)
                else:
                    new = Series(raw, total + raw)
                    resets += 1
                if new.total > MAX_TOTAL:
                    raise TotalOverflow(key, total, raw)
            changed[key] = new
            merged[key] = new
        view = replace(
            self,
            agent_version=req.agent_version,
            kernel_version=req.kernel_version,
            last_heartbeat=received_at,
            uptime_seconds=req.uptime_seconds,
            heartbeats=self.heartbeats + 1,
            resets=self.resets + resets,
            series=merged,
            telemetry=fleet_insights.telemetry_of(req),
            image=image_report.of_request(req, self.image),
        )
        return view, changed


class Fleet:
    """Thread-safe map of agent id to its latest committed view.

    Readers that keep derived state (the exporter's per-view caches) subscribe
    to hear about new views as they are installed; the fleet does not know what
    they derive, and the writer does not know they exist.
    """

    def __init__(self, views: Iterable[AgentView] = ()) -> None:
        self._lock = threading.Lock()
        self._views: dict[str, AgentView] = {v.agent_id: v for v in views}
        self._subscribers: list[Callable[[list[AgentView]], None]] = []

    def subscribe(self, installed: Callable[[list[AgentView]], None]) -> None:
        """Call `installed(views)` after views are published or merged (outside the lock)."""
        self._subscribers.append(installed)

    def _installed(self, views: list[AgentView]) -> None:
        for callback in self._subscribers:
            callback(views)

    def get(self, agent_id: str) -> AgentView | None:
        with self._lock:
            return self._views.get(agent_id)

    def publish(self, views: Mapping[str, AgentView]) -> None:
        """Install committed views; enrolment metadata (hostname) stays as `enrolled` set it."""
        installed = []
        with self._lock:
            for agent_id, view in views.items():
                current = self._views.get(agent_id)
                if current is not None and (
                    current.hostname != view.hostname or current.registered_at != view.registered_at
                ):
                    view = replace(
                        view, hostname=current.hostname, registered_at=current.registered_at
                    )
                self._views[agent_id] = view
                installed.append(view)
        self._installed(installed)

    def enrolled(
        self, agent_id: str, hostname: str, agent_version: str, kernel_version: str, at: float
    ) -> None:
        """Record (re-)enrolment metadata, keeping any counters the agent already has."""
        with self._lock:
            current = self._views.get(agent_id) or AgentView(agent_id, registered_at=at)
            self._views[agent_id] = replace(
                current,
                hostname=hostname,
                agent_version=agent_version,
                kernel_version=kernel_version,
            )

    def merge_newer(self, views: Iterable[AgentView]) -> None:
        """Take views reloaded from the shared database where they are at least as new.

        `heartbeats` only grows per agent, so a reload that raced with our own
        writer can never move an exported counter backwards.
        """
        installed = []
        with self._lock:
            for view in views:
                current = self._views.get(view.agent_id)
                if current is None or view.heartbeats >= current.heartbeats:
                    self._views[view.agent_id] = view
                    installed.append(view)
        self._installed(installed)

    def snapshot(self) -> list[AgentView]:
        """All views, sorted by agent id (stable exposition order)."""
        with self._lock:
            views = list(self._views.values())
        views.sort(key=lambda v: v.agent_id)
        return views

    def __len__(self) -> int:
        with self._lock:
            return len(self._views)

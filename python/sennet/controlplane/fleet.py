"""What the control plane currently knows about each agent, and counter-reset handling.

Agents send raw cumulative counters. They can go backwards (an agent restarted
without its pinned maps, a reboot), and exporting the raw value would make
Prometheus see a reset at an arbitrary point. Instead each series keeps
`total`: a monotonic sum of increases, where a drop below the last raw value
counts the new raw value as the increase since the reset. `rate()` and
`increase()` over `total` are then exact, and `total` survives control-plane
restarts because the writer stores it in the same transaction as the heartbeat.

`AgentView` values are immutable; the writer replaces them only after commit,
so /metrics never shows a heartbeat that was not durable.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

INTERFACE_FIELDS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
EVENTS = "events"
RINGBUF_DROPS = "ringbuf_drops"
AGENT_DROPPED = "agent_dropped"
# How series are grouped for export (one Prometheus family each), in exposition order.
EXPORT_GROUPS = ("packets", "bytes", EVENTS, RINGBUF_DROPS, AGENT_DROPPED)

Export = tuple[tuple[tuple[str, ...], ...], tuple[tuple[int, ...], ...]]


_GROUP_OF = {
    **{f"{d}_{unit}": unit for d in ("rx", "tx") for unit in ("packets", "bytes")},
    **{f: f for f in (EVENTS, RINGBUF_DROPS, AGENT_DROPPED)},
}


@dataclass(frozen=True)
class Series:
    last_raw: int
    total: int


def advance(prev: Series | None, raw: int) -> tuple[Series, bool]:
    """Fold one raw cumulative reading into a series; the flag says a reset was seen."""
    if prev is None:
        return Series(raw, raw), False
    if raw >= prev.last_raw:
        return Series(raw, prev.total + raw - prev.last_raw), False
    return Series(raw, prev.total + raw), True


def series_key(family: str, name: str) -> str:
    """`rx_packets:eth0`, `events:large_packet`, `agent_dropped:` (family never holds ':')."""
    return f"{family}:{name}"


def split_key(key: str) -> tuple[str, str]:
    family, _, name = key.partition(":")
    return family, name


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
    series: Mapping[str, Series] = field(default_factory=dict)

    def raw_readings(self, req: pb.HeartbeatRequest) -> dict[str, int]:
        """The raw cumulative values a heartbeat carries, by series key."""
        out: dict[str, int] = {}
        for itf in req.interfaces:
            for name in INTERFACE_FIELDS:
                out[series_key(name, itf.name)] = getattr(itf, name)
        for kind, count in req.events_by_kind.items():
            out[series_key(EVENTS, kind)] = count
        for kind, count in req.ringbuf_drops_by_kind.items():
            out[series_key(RINGBUF_DROPS, kind)] = count
        out[series_key(AGENT_DROPPED, "")] = req.events_dropped_by_agent
        return out

    def apply(
        self, req: pb.HeartbeatRequest, received_at: float
    ) -> tuple[AgentView, dict[str, Series]]:
        """The view after `req`, and the series that changed (for the writer to store)."""
        merged = dict(self.series)
        changed: dict[str, Series] = {}
        resets = 0
        for key, raw in self.raw_readings(req).items():
            new, was_reset = advance(merged.get(key), raw)
            resets += was_reset
            if merged.get(key) != new:
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
        )
        return view, changed

    @functools.cached_property
    def export(self) -> Export:
        """(series keys, monotonic totals) per EXPORT_GROUPS entry, keys sorted.

        Computed once per view (views are immutable), so a scrape renders an
        agent's family with one `%` on a cached format string.
        """
        groups: dict[str, list[str]] = {g: [] for g in EXPORT_GROUPS}
        series = self.series
        for key in sorted(series):
            groups[_GROUP_OF[key[: key.index(":")]]].append(key)
        keys = tuple(tuple(groups[g]) for g in EXPORT_GROUPS)
        values = tuple(tuple([series[k].total for k in ks]) for ks in keys)
        return keys, values

    def totals(self, family: str) -> list[tuple[str, int]]:
        """(name, monotonic total) for one family, sorted by name."""
        prefix = family + ":"
        return sorted(
            (k[len(prefix) :], s.total) for k, s in self.series.items() if k.startswith(prefix)
        )


class Fleet:
    """Thread-safe map of agent id to its latest committed view."""

    def __init__(self, views: Iterable[AgentView] = ()) -> None:
        self._lock = threading.Lock()
        self._views: dict[str, AgentView] = {v.agent_id: v for v in views}

    def get(self, agent_id: str) -> AgentView | None:
        with self._lock:
            return self._views.get(agent_id)

    def publish(self, views: Mapping[str, AgentView]) -> None:
        """Install committed views; enrolment metadata (hostname) stays as `enrolled` set it."""
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
        with self._lock:
            for view in views:
                current = self._views.get(view.agent_id)
                if current is None or view.heartbeats >= current.heartbeats:
                    self._views[view.agent_id] = view

    def snapshot(self) -> list[AgentView]:
        """All views, sorted by agent id (stable exposition order)."""
        with self._lock:
            views = list(self._views.values())
        views.sort(key=lambda v: v.agent_id)
        return views

    def __len__(self) -> int:
        with self._lock:
            return len(self._views)

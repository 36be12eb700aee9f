"""Per-agent fleet series as Prometheus exposition, two ways that must agree.

`FleetCollector` is the plain prometheus-client path (a custom collector
yielding `*MetricFamily` objects at scrape time); it is the reference.
`FastFleetRenderer` writes the same samples as text, with each agent's label
prefixes rendered once and cached, because at 10,000 agents (150,000 series)
the plain path takes about a second per scrape. `ExportCache` holds each
view's series grouped and sorted for that renderer; the exporter warms it as
the fleet installs committed views, so neither the writer nor a scrape pays
for it. Tests check that both paths produce the same samples and that
`promtool` accepts the output.

Agent counters are exported as the monotonic totals from `fleet.py`, so a
counter reset on an agent never looks like a drop to Prometheus.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sennet.controlplane.fleet import (
    AGENT_DROPPED,
    EVENTS,
    INTERFACE_FIELDS,
    RINGBUF_DROPS,
    AgentView,
    Fleet,
    Series,
    SeriesKey,
)

# (metric name as exposed, type, help, label names) for the per-agent families, in output order.
_INFO = ("sennet_agent_info", "gauge", "Agent metadata (value is always 1).")
_UP = ("sennet_agent_up", "gauge", "1 if the agent sent a heartbeat within the staleness window.")
_LAST = (
    "sennet_agent_last_heartbeat_timestamp_seconds",
    "gauge",
    "Unix time of the agent's last stored heartbeat.",
)
_UPTIME = ("sennet_agent_uptime_seconds", "gauge", "Agent process uptime at its last heartbeat.")
_RESETS = (
    "sennet_agent_series_resets_total",
    "counter",
    "Times one of the agent's cumulative counters went backwards (restart without pinned maps).",
)
_PACKETS = (
    "sennet_interface_packets_total",
    "counter",
    "Packets seen by the TC hooks, monotonic across agent counter resets.",
)
_BYTES = (
    "sennet_interface_bytes_total",
    "counter",
    "Bytes seen by the TC hooks (frame length, no FCS), monotonic across resets.",
)
_EVENTS = ("sennet_events_total", "counter", "Events detected in the kernel, by kind.")
_RB = (
    "sennet_ringbuf_drops_total",
    "counter",
    "Events lost because the ring buffer was full, by kind.",
)
_AGENT_DROPPED = (
    "sennet_agent_events_dropped_total",
    "counter",
    "Events the agent decoded but could not deliver (its queue overflowed).",
)
_IF_FAMILIES = {"packets": _PACKETS, "bytes": _BYTES}


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _is_up(view: AgentView, now: float, stale_after_s: float) -> int:
    return int(view.last_heartbeat is not None and now - view.last_heartbeat <= stale_after_s)


class FleetCollector(Collector):
    """The plain prometheus-client rendering of per-agent series (reference path)."""

    def __init__(self, fleet: Fleet, stale_after_s: float, clock: Callable[[], float] = time.time):
        self._fleet = fleet
        self._stale_after_s = stale_after_s
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        views = self._fleet.snapshot()
        now = self._clock()
        info = GaugeMetricFamily(
            _INFO[0], _INFO[2], labels=["agent", "hostname", "agent_version", "kernel_version"]
        )
        up = GaugeMetricFamily(_UP[0], _UP[2], labels=["agent"])
        last = GaugeMetricFamily(_LAST[0], _LAST[2], labels=["agent"])
        uptime = GaugeMetricFamily(_UPTIME[0], _UPTIME[2], labels=["agent"])
        resets = CounterMetricFamily(_RESETS[0], _RESETS[2], labels=["agent"])
        ifs = {
            unit: CounterMetricFamily(spec[0], spec[2], labels=["agent", "interface", "direction"])
            for unit, spec in _IF_FAMILIES.items()
        }
        events = CounterMetricFamily(_EVENTS[0], _EVENTS[2], labels=["agent", "kind"])
        drops = CounterMetricFamily(_RB[0], _RB[2], labels=["agent", "kind"])
        agent_dropped = CounterMetricFamily(_AGENT_DROPPED[0], _AGENT_DROPPED[2], labels=["agent"])
        for v in views:
            a = v.agent_id
            info.add_metric([a, v.hostname, v.agent_version, v.kernel_version], 1)
            up.add_metric([a], _is_up(v, now, self._stale_after_s))
            if v.last_heartbeat is not None:
                last.add_metric([a], v.last_heartbeat)
                uptime.add_metric([a], v.uptime_seconds)
            resets.add_metric([a], v.resets)
            for (family, name), s in sorted(v.series.items()):
                if family == EVENTS:
                    events.add_metric([a, name], s.total)
                elif family == RINGBUF_DROPS:
                    drops.add_metric([a, name], s.total)
                elif family == AGENT_DROPPED:
                    agent_dropped.add_metric([a], s.total)
                elif family in INTERFACE_FIELDS:
                    direction, _, unit = family.partition("_")
                    ifs[unit].add_metric([a, name, direction], s.total)
        yield from (
            info,
            up,
            last,
            uptime,
            resets,
            ifs["packets"],
            ifs["bytes"],
            events,
            drops,
            agent_dropped,
        )


# How series are grouped for export (one Prometheus family each), in exposition order.
EXPORT_GROUPS = ("packets", "bytes", EVENTS, RINGBUF_DROPS, AGENT_DROPPED)
_GROUP_OF = {
    **{f: f.partition("_")[2] for f in INTERFACE_FIELDS},
    **{f: f for f in (EVENTS, RINGBUF_DROPS, AGENT_DROPPED)},
}
# (series keys, monotonic totals) per EXPORT_GROUPS entry, keys sorted
Export = tuple[tuple[tuple[SeriesKey, ...], ...], tuple[tuple[int, ...], ...]]


def _export(series: Mapping[SeriesKey, Series]) -> Export:
    groups: dict[str, list[SeriesKey]] = {g: [] for g in EXPORT_GROUPS}
    for key in series:
        group = _GROUP_OF.get(key.family)
        if group is not None:  # flow, DNS and TCP series: insight_exposition.py
            groups[group].append(key)
    keys = tuple(tuple(sorted(groups[g])) for g in EXPORT_GROUPS)
    values = tuple(tuple([series[k].total for k in ks]) for ks in keys)
    return keys, values


class ExportCache:
    """Each agent's series grouped and sorted for exposition, computed once per committed view.

    Views are immutable and a new heartbeat brings a new `series` mapping, so
    an entry is valid while the agent's current view holds the same mapping
    (re-enrolment copies a view but keeps its mapping). `warm` runs when the
    fleet installs views, so a scrape finds the work done; `exports` computes
    whatever is still missing (the first scrape after a restart).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_agent: dict[str, tuple[Mapping[SeriesKey, Series], Export]] = {}

    def warm(self, views: Iterable[AgentView]) -> None:
        computed = [(v.agent_id, v.series, _export(v.series)) for v in views]
        with self._lock:
            for agent_id, series, export in computed:
                self._by_agent[agent_id] = (series, export)

    def exports(self, views: list[AgentView]) -> list[Export]:
        """One export per view, in order; entries of agents no longer present are dropped."""
        out: list[Export] = []
        with self._lock:
            cache = self._by_agent
            for v in views:
                hit = cache.get(v.agent_id)
                if hit is None or hit[0] is not v.series:
                    hit = (v.series, _export(v.series))
                    cache[v.agent_id] = hit
                out.append(hit[1])
            if len(cache) > len(views):
                live = {v.agent_id for v in views}
                for gone in [k for k in cache if k not in live]:
                    del cache[gone]
        return out


@dataclass
class _Layout:
    """One agent's pre-rendered text, valid while its series keys and metadata are unchanged."""

    signature: tuple[object, ...]
    info: str
    up: str
    last: str
    uptime: str
    resets: str
    formats: tuple[str, ...]  # per EXPORT_GROUPS entry: "prefix %d\n" for each series
    # per EXPORT_GROUPS entry, the values last rendered and their text: event and drop
    # counters rarely move, so most scrapes reuse their text instead of formatting again
    rendered: list[tuple[tuple[int, ...], str]] = field(default_factory=list)

    def text(self, index: int, values: tuple[int, ...]) -> str:
        last_values, last_text = self.rendered[index]
        if values == last_values:
            return last_text
        text = self.formats[index] % values
        self.rendered[index] = (values, text)
        return text


def _series_prefix(agent_label: str, key: SeriesKey) -> str:
    family, name = key
    if family in (EVENTS, RINGBUF_DROPS):
        metric = _EVENTS[0] if family == EVENTS else _RB[0]
        return f'{metric}{{{agent_label},kind="{_esc(name)}"}} '
    if family == AGENT_DROPPED:
        return f"{_AGENT_DROPPED[0]}{{{agent_label}}} "
    direction, _, unit = family.partition("_")
    metric = _IF_FAMILIES[unit][0]
    return f'{metric}{{{agent_label},interface="{_esc(name)}",direction="{direction}"}} '


class FastFleetRenderer:
    """Renders the same samples as `FleetCollector`, reusing per-agent text between scrapes."""

    def __init__(self, stale_after_s: float, exports: ExportCache) -> None:
        self._stale_after_s = stale_after_s
        self._exports = exports
        self._layouts: dict[str, _Layout] = {}
        self._lock = threading.Lock()  # concurrent scrapes share the cache

    def _layout(self, v: AgentView, keys: tuple[tuple[SeriesKey, ...], ...]) -> _Layout:
        signature = (v.hostname, v.agent_version, v.kernel_version, keys)
        cached = self._layouts.get(v.agent_id)
        if cached is not None and cached.signature == signature:
            return cached
        a = f'agent="{_esc(v.agent_id)}"'
        formats = tuple(
            "".join(_series_prefix(a, k).replace("%", "%%") + "%d\n" for k in group)
            for group in keys
        )
        layout = _Layout(
            signature=signature,
            info=(
                f'{_INFO[0]}{{{a},hostname="{_esc(v.hostname)}",'
                f'agent_version="{_esc(v.agent_version)}",'
                f'kernel_version="{_esc(v.kernel_version)}"}} 1\n'
            ),
            up=f"{_UP[0]}{{{a}}} ",
            last=f"{_LAST[0]}{{{a}}} ",
            uptime=f"{_UPTIME[0]}{{{a}}} ",
            resets=f"{_RESETS[0]}{{{a}}} ",
            formats=formats,
            rendered=[((), "")] * len(formats),
        )
        self._layouts[v.agent_id] = layout
        return layout

    def render(self, views: list[AgentView], now: float) -> str:
        """Text exposition (format 0.0.4) of every per-agent family."""
        with self._lock:
            return self._render(views, now)

    def _render(self, views: list[AgentView], now: float) -> str:
        exports = self._exports.exports(views)
        layouts = [self._layout(v, e[0]) for v, e in zip(views, exports, strict=True)]
        if len(self._layouts) > len(views):
            live = {v.agent_id for v in views}
            for gone in [k for k in self._layouts if k not in live]:
                del self._layouts[gone]
        pairs = list(zip(views, layouts, strict=True))
        values = [e[1] for e in exports]
        beating = [(v, lay) for v, lay in pairs if v.last_heartbeat is not None]
        out: list[str] = []

        def header(spec: tuple[str, str, str]) -> None:
            out.append(f"# HELP {spec[0]} {spec[2]}\n# TYPE {spec[0]} {spec[1]}\n")

        header(_INFO)
        out.extend(lay.info for lay in layouts)
        header(_UP)
        stale = self._stale_after_s
        out.extend(f"{lay.up}{_is_up(v, now, stale)}\n" for v, lay in pairs)
        header(_LAST)
        out.extend(f"{lay.last}{v.last_heartbeat!r}\n" for v, lay in beating)
        header(_UPTIME)
        out.extend(f"{lay.uptime}{v.uptime_seconds!r}\n" for v, lay in beating)
        header(_RESETS)
        out.extend(f"{lay.resets}{v.resets}\n" for v, lay in pairs)
        for index, spec in enumerate((_PACKETS, _BYTES, _EVENTS, _RB, _AGENT_DROPPED)):
            header(spec)
            out.extend(lay.text(index, vs[index]) for vs, lay in zip(values, layouts, strict=True))
        return "".join(out)

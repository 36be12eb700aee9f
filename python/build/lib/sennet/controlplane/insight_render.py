"""The fast text path for the flow, DNS and TCP families: what /metrics serves.

Same samples as `insight_exposition.InsightCollector` (a test compares them),
rendered the way `fleet_exposition.FastFleetRenderer` renders interface
series: each agent's label text is laid out once per set of series keys (which
rarely changes: a new DNS type, a new histogram bound) as `%`-format strings,
and a heartbeat only fills in its values. The work happens when the fleet
installs a committed view (the writer thread, after commit), so a scrape only
joins ready strings, one family at a time. At fleet size this matters: three
28-bucket histograms give an agent about 90 of these series, more than its
interface and event series together.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from itertools import accumulate
from typing import NamedTuple

from sennet.controlplane import fleet_insights as fi
from sennet.controlplane.fleet import AgentView, Series, SeriesKey
from sennet.controlplane.insight_exposition import (
    COUNTERS,
    FAMILIES,
    HISTOGRAMS,
    INDEX,
    Sample,
    exported_bucket,
    gauge_samples,
)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _line(name: str, agent: str, labels: Iterable[tuple[str, str]], value: str) -> str:
    text = "".join(f',{k}="{_esc(v)}"' for k, v in labels)
    return f"{name}{{{agent}{text}}} {value}\n"


def _slot(name: str, agent: str, labels: Iterable[tuple[str, str]], placeholder: str) -> str:
    """A sample line as a `%`-format string: label text escaped, the value a placeholder."""
    return _line(name, agent, labels, "").replace("%", "%%")[:-1] + placeholder + "\n"


class _Group(NamedTuple):
    family: int  # index into FAMILIES
    keys: tuple[SeriesKey, ...]  # whose totals fill `fmt`, in order
    sum_key: SeriesKey | None  # histograms: the sum series (nanoseconds)
    picks: tuple[int, ...]  # histograms: the positions in `keys` whose buckets are exported
    fmt: str


class _Layout(NamedTuple):
    keys: tuple[SeriesKey, ...]  # the view's series keys it was built for
    groups: tuple[_Group, ...]


# Stands for the agent's label in a shape's templates (a NUL never occurs in rendered text).
_AGENT = "\x00"
_MAX_SHAPES = 256  # distinct key sets kept; fleets share a handful (same agent versions)
_NOTHING = ("",) * len(FAMILIES)  # the text of an agent without flow, DNS or TCP parts


def _shape(keys: tuple[SeriesKey, ...], step: int) -> tuple[_Group, ...]:
    """The groups for a set of flow/DNS/TCP series keys, the agent label left as `_AGENT`."""
    counters: dict[int, list[SeriesKey]] = {}
    buckets: dict[str, list[SeriesKey]] = {}
    for key in keys:
        if key.family in COUNTERS:
            counters.setdefault(INDEX[COUNTERS[key.family][0]], []).append(key)
        elif key.family in HISTOGRAMS:
            buckets.setdefault(key.family, []).append(key)
    groups = []
    for index, group in sorted(counters.items()):
        name, label = COUNTERS[group[0].family]
        group.sort()
        fmt = "".join(_slot(name, _AGENT, [(label, k.name)] if label else [], "%d") for k in group)
        groups.append(_Group(index, tuple(group), None, (), fmt))
    for family, group in buckets.items():
        name = HISTOGRAMS[family]
        group.sort(key=lambda k: float(k.name))  # float("+Inf") sorts last
        picks = tuple(i for i, k in enumerate(group) if exported_bucket(i, k.name, step))
        fmt = "".join(_slot(f"{name}_bucket", _AGENT, [("le", group[i].name)], "%d") for i in picks)
        fmt += _slot(f"{name}_count", _AGENT, (), "%d") + _slot(f"{name}_sum", _AGENT, (), "%r")
        sum_key = SeriesKey(family + fi.SUM, "")
        groups.append(_Group(INDEX[name], tuple(group), sum_key, picks, fmt))
    return tuple(groups)


def _values(group: _Group, series: Mapping[SeriesKey, Series]) -> tuple[int | float, ...]:
    totals = [series[k].total for k in group.keys]
    if group.sum_key is None:
        return tuple(totals)
    cumulative = list(accumulate(totals))
    nanos = series[group.sum_key].total if group.sum_key in series else 0
    count = cumulative[-1] if cumulative else 0
    return (*(cumulative[i] for i in group.picks), count, nanos / 1e9)


def _gauge_text(agent_id: str, telemetry: fi.Telemetry | None) -> dict[int, str]:
    agent = f'agent="{_esc(agent_id)}"'
    out: dict[int, str] = {}
    for index, samples in gauge_samples(telemetry).items():
        name = FAMILIES[index].name
        out[index] = "".join(_line(name, agent, s.labels, _number(s)) for s in samples)
    return out


def _number(s: Sample) -> str:
    return repr(s.value) if isinstance(s.value, float) else str(s.value)


class _Rendered(NamedTuple):
    series: Mapping[SeriesKey, Series]
    telemetry: fi.Telemetry | None
    layout: _Layout
    text: tuple[str, ...]  # per FAMILIES entry


class InsightRenderer:
    """Per-agent text prepared when a view is installed; a scrape joins it by family."""

    def __init__(self, histogram_step: int = 1) -> None:
        self._step = histogram_step  # export every step-th histogram bound (exported_bucket)
        self._lock = threading.Lock()
        self._by_agent: dict[str, _Rendered] = {}
        # key set -> groups with the agent left open: laid out once for every agent that has
        # the same flow/DNS/TCP series (the first scrape after a restart meets 10,000 agents)
        self._shapes: dict[tuple[SeriesKey, ...], tuple[_Group, ...]] = {}
        self._shapes_lock = threading.Lock()  # apart: a scrape lays out under self._lock

    def _layout(self, view: AgentView) -> _Layout:
        keys = tuple(k for k in view.series if k.family in fi.FAMILIES)
        with self._shapes_lock:
            shape = self._shapes.get(keys)
        if shape is None:
            shape = _shape(keys, self._step)
            with self._shapes_lock:
                if len(self._shapes) >= _MAX_SHAPES:
                    self._shapes.clear()
                self._shapes[keys] = shape
        agent = f'agent="{_esc(view.agent_id)}"'.replace("%", "%%")
        groups = tuple(g._replace(fmt=g.fmt.replace(_AGENT, agent)) for g in shape)
        return _Layout(tuple(view.series), groups)

    def _render(self, view: AgentView, previous: _Rendered | None) -> _Rendered:
        layout = previous.layout if previous is not None else None
        if layout is None or layout.keys != tuple(view.series):
            layout = self._layout(view)
        text = [""] * len(FAMILIES)
        for group in layout.groups:
            text[group.family] = group.fmt % _values(group, view.series)
        if previous is not None and previous.telemetry is view.telemetry:
            for index, family in enumerate(FAMILIES):
                if family.type == "gauge":
                    text[index] = previous.text[index]
        else:
            for index, gauges in _gauge_text(view.agent_id, view.telemetry).items():
                text[index] = gauges
        # agents without flow/DNS/TCP parts share one empty tuple, which a scrape skips
        return _Rendered(
            view.series, view.telemetry, layout, tuple(text) if any(text) else _NOTHING
        )

    def warm(self, views: Iterable[AgentView]) -> None:
        """Render newly committed views (called by the fleet, outside its lock)."""
        for v in views:
            with self._lock:
                previous = self._by_agent.get(v.agent_id)
            rendered = self._render(v, previous)
            with self._lock:
                self._by_agent[v.agent_id] = rendered

    def render(self, views: list[AgentView]) -> str:
        """Every family's header and samples, agents in the order given."""
        texts = []
        with self._lock:
            cache = self._by_agent
            for v in views:
                hit = cache.get(v.agent_id)
                if hit is None or hit.series is not v.series or hit.telemetry is not v.telemetry:
                    hit = self._render(v, hit)
                    cache[v.agent_id] = hit
                if hit.text is not _NOTHING:
                    texts.append(hit.text)
            if len(cache) > len(views):
                live = {v.agent_id for v in views}
                for gone in [k for k in cache if k not in live]:
                    del cache[gone]
        out = []
        for i, family in enumerate(FAMILIES):
            out.append(f"# HELP {family.name} {family.help}\n# TYPE {family.name} {family.type}\n")
            out.extend(t[i] for t in texts)
        return "".join(out)

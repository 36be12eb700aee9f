"""The per-agent part of /metrics as bytes, prepared per agent when its view is installed.

Same samples, same order, as `FastFleetRenderer` + `InsightRenderer` (the
path before it, still selectable, see `metrics.py`), but a scrape does less:

- Each agent's text for every family (interfaces, events, flows, DNS, TCP) is
  prepared as bytes when the fleet installs its committed view (the writer
  thread, after commit), at most once between two scrapes: later views of
  the same agent are prepared by the next scrape, once, instead of on every
  heartbeat (with flow, DNS and TCP parts that was the writer's largest
  share). A scrape checks each view is the one prepared (an identity test),
  prepares those that are not, and joins ready bytes, one family at a time,
  into one buffer: no per-series formatting and no final encode of the
  whole body (at 1.5 M series that encode alone copied 155 MB).
- The label text is laid out once per *shape* (the set of series keys, which
  agents of one version share) with the agent left open, so the first scrape
  after a restart fills in ids and values instead of escaping every label
  of 10,000 agents again.
- `sennet_agent_up` is the only family that depends on the scrape's clock;
  both of an agent's possible lines are prepared and the scrape picks one.
- Between two scrapes with no new view, the joined blocks are reused.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterable
from operator import attrgetter, itemgetter
from typing import NamedTuple

from sennet.controlplane import fleet_exposition as fx
from sennet.controlplane.fleet import AgentView, SeriesKey
from sennet.controlplane.fleet_insights import FAMILIES as FLOW_DNS_TCP
from sennet.controlplane.insight_exposition import FAMILIES
from sennet.controlplane.insight_render import InsightRenderer

_AGENT = "\x00"  # stands for the agent's label text in a shape (never in rendered text)
_MAX_SHAPES = 256
_LAST, _UPTIME, _RESETS = (spec[0] for spec in fx.AFTER_UP[:3])


def _header(name: str, kind: str, help_text: str) -> bytes:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode()


_INFO_HEAD = _header(fx.INFO[0], fx.INFO[1], fx.INFO[2])
_UP_HEAD = _header(fx.UP[0], fx.UP[1], fx.UP[2])
# Families after `sennet_agent_up`, in output order: the fleet's, then flows, DNS, TCP.
_FLEET_HEADS = tuple(_header(*spec) for spec in fx.AFTER_UP)
_INSIGHT_HEADS = tuple(_header(f.name, f.type, f.help) for f in FAMILIES)


class _Text(NamedTuple):
    view: AgentView  # the view this text was prepared from (valid while it is current)
    up: bytes  # the `sennet_agent_up` line when up, then when stale
    down: bytes
    info: bytes
    fleet: tuple[bytes, ...]  # per fx.AFTER_UP entry
    insights: tuple[bytes, ...] | None  # per FAMILIES entry; None: no flow, DNS or TCP parts
    keys: tuple[tuple[SeriesKey, ...], ...]  # the interface/event layout `formats` is for
    formats: tuple[str, ...]  # per EXPORT_GROUPS entry, this agent's "%d" lines


class _Shape(NamedTuple):
    """What agents whose series keys come in one order share (agents of one version)."""

    keys: tuple[tuple[SeriesKey, ...], ...]  # per EXPORT_GROUPS entry, sorted
    templates: tuple[str, ...]  # per EXPORT_GROUPS entry, "%d" lines, the agent left open
    insights: bool  # has flow, DNS or TCP series


def _shape(v: AgentView) -> _Shape:
    keys, _ = fx.export_of(v.series)
    label = f'agent="{_AGENT}"'
    templates = tuple(
        "".join(fx.series_prefix(label, k).replace("%", "%%") + "%d\n" for k in group)
        for group in keys
    )
    return _Shape(keys, templates, any(k.family in FLOW_DNS_TCP for k in v.series))


_FLEET = attrgetter("fleet")


class FleetText:
    """Prepares each installed view's bytes; `render` joins them for a scrape."""

    def __init__(self, stale_after_s: float, histogram_step: int = 1) -> None:
        self._stale_after_s = stale_after_s
        self._insights = InsightRenderer(histogram_step)
        self._lock = threading.Lock()
        self._by_agent: dict[str, _Text] = {}
        self._shapes: dict[tuple[SeriesKey, ...], _Shape] = {}  # by the series' key order
        self._generation = 0  # bumped whenever an agent's text changes
        self._unscraped: set[str] = set()  # agents whose text `warm` prepared since a scrape
        # generation and agent count the joined chunks are for, and the chunks
        self._joined: tuple[int, int, list[bytes], list[bytes]] | None = None

    def _prepare(self, v: AgentView, previous: _Text | None) -> _Text:
        series = v.series
        order = tuple(series)
        shape = self._shapes.get(order)
        if shape is None:
            shape = _shape(v)
            if len(self._shapes) >= _MAX_SHAPES:
                self._shapes.clear()
            self._shapes[order] = shape
        keys = shape.keys
        values = [tuple([series[k].total for k in group]) for group in keys]
        if previous is not None and previous.keys == keys:
            formats = previous.formats
        else:
            agent = fx.esc(v.agent_id).replace("%", "%%")
            formats = tuple(f.replace(_AGENT, agent) for f in shape.templates)
        a = f'agent="{fx.esc(v.agent_id)}"'
        beating = v.last_heartbeat is not None
        fleet = [
            f"{_LAST}{{{a}}} {v.last_heartbeat!r}\n" if beating else "",
            f"{_UPTIME}{{{a}}} {v.uptime_seconds!r}\n" if beating else "",
            f"{_RESETS}{{{a}}} {v.resets}\n",
        ]
        fleet += map(operator.mod, formats, values)
        insights = None
        if shape.insights or v.telemetry is not None:
            insights = tuple(map(str.encode, self._insights.text_of(v)))
        return _Text(
            view=v,
            up=f"{fx.UP[0]}{{{a}}} 1\n".encode(),
            down=f"{fx.UP[0]}{{{a}}} 0\n".encode(),
            info=(
                f'{fx.INFO[0]}{{{a},hostname="{fx.esc(v.hostname)}",'
                f'agent_version="{fx.esc(v.agent_version)}",'
                f'kernel_version="{fx.esc(v.kernel_version)}"}} 1\n'
            ).encode(),
            fleet=tuple(map(str.encode, fleet)),
            insights=insights,
            keys=keys,
            formats=formats,
        )

    def warm(self, views: Iterable[AgentView]) -> None:
        """Prepare newly committed views (called by the fleet, outside its lock).

        At most once per agent between two scrapes: an agent whose text was
        prepared since the last scrape is left for the scrape, which prepares
        its newest view once, however many heartbeats came in between. With
        heartbeats no more frequent than scrapes (the usual case) every view
        is still prepared here, off the scrape's path.
        """
        for v in views:
            with self._lock:
                previous = self._by_agent.get(v.agent_id)
                if previous is not None and (previous.view is v or v.agent_id in self._unscraped):
                    continue
            text = self._prepare(v, previous)
            with self._lock:
                self._by_agent[v.agent_id] = text
                self._unscraped.add(v.agent_id)
                self._generation += 1

    def render(self, views: list[AgentView], now: float) -> list[bytes]:
        """Every per-agent family, headers included, agents in the order given, as chunks.

        Chunks, not one body: the caller joins them with its own head in one copy.
        """
        with self._lock:
            cache = self._by_agent
            texts = []
            for v in views:
                hit = cache.get(v.agent_id)
                if hit is None or hit.view is not v:
                    hit = self._prepare(v, hit)
                    cache[v.agent_id] = hit
                    self._generation += 1
                texts.append(hit)
            self._unscraped.clear()
            if len(cache) > len(views):
                live = {v.agent_id for v in views}
                for gone in [k for k in cache if k not in live]:
                    del cache[gone]
                self._generation += 1
            joined = self._joined
            if joined is None or joined[0] != self._generation or joined[1] != len(texts):
                info = [_INFO_HEAD, *(t.info for t in texts)]
                rest = []
                for i, head in enumerate(_FLEET_HEADS):
                    rest.append(head)
                    rest += map(itemgetter(i), map(_FLEET, texts))
                parts = [t.insights for t in texts if t.insights is not None]
                for i, head in enumerate(_INSIGHT_HEADS):
                    rest.append(head)
                    rest += map(itemgetter(i), parts)
                joined = (self._generation, len(texts), info, rest)
                self._joined = joined
        stale = self._stale_after_s
        up = [
            t.up
            if t.view.last_heartbeat is not None and now - t.view.last_heartbeat <= stale
            else t.down
            for t in texts
        ]
        return [*joined[2], _UP_HEAD, *up, *joined[3]]

"""The appliance image and last update outcome of each agent on /metrics, two ways.

`ImageCollector` is the prometheus-client reference; `ImageRenderer` writes the
same samples as text for the fast path, keeping each agent's three lines while
its report is the same object (`image_report.of_request` keeps an unchanged
report's identity), so a scrape of 10,000 appliances joins cached strings.
Only agents that reported an image or an outcome appear: an agent on an
ordinary host has neither, and a missing series says so better than
a series with empty labels. The `agent` label is the one every other per-agent
family uses, so the two join in PromQL (`... * on (agent) group_left ...`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sennet.controlplane.fleet import AgentView, Fleet
from sennet.controlplane.image_report import ImageReport

IMAGE = (
    "sennet_agent_image_info",
    "The appliance image the agent runs (value is always 1): version, slot and digest.",
)
OUTCOME = (
    "sennet_agent_update_last_outcome",
    "The last update the appliance finished (value is always 1): result, reason, versions.",
)
OUTCOME_AT = (
    "sennet_agent_update_last_outcome_timestamp_seconds",
    "Unix time the last update finished, as the appliance's updater recorded it.",
)
_IMAGE_LABELS = ("agent", "version", "slot", "digest")
_OUTCOME_LABELS = ("agent", "result", "reason", "from_version", "to_version")


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _image_values(v: AgentView) -> tuple[str, ...] | None:
    i = v.image
    if i is None or not i.has_image:
        return None
    return (v.agent_id, i.version, i.slot, i.digest)


def _outcome_values(v: AgentView) -> tuple[str, ...] | None:
    i = v.image
    if i is None or not i.result:
        return None
    return (v.agent_id, i.result, i.reason, i.from_version, i.to_version)


class ImageCollector(Collector):
    """The plain prometheus-client rendering (the reference the fast text is tested against)."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[Metric]:
        image = GaugeMetricFamily(*IMAGE, labels=list(_IMAGE_LABELS))
        outcome = GaugeMetricFamily(*OUTCOME, labels=list(_OUTCOME_LABELS))
        at = GaugeMetricFamily(*OUTCOME_AT, labels=["agent"])
        for v in self._fleet.snapshot():
            values = _image_values(v)
            if values is not None:
                image.add_metric(list(values), 1)
            values = _outcome_values(v)
            if values is not None and v.image is not None:
                outcome.add_metric(list(values), 1)
                at.add_metric([v.agent_id], v.image.at_unix)
        yield from (image, outcome, at)


def _line(name: str, labels: tuple[str, ...], values: tuple[str, ...], value: str) -> str:
    pairs = ",".join(f'{k}="{_esc(x)}"' for k, x in zip(labels, values, strict=True))
    return f"{name}{{{pairs}}} {value}\n"


def _lines(v: AgentView) -> tuple[str, str, str]:
    """One agent's line in each of the three families ("" where it has none)."""
    image = _image_values(v)
    outcome = _outcome_values(v)
    at = repr(v.image.at_unix) if v.image is not None else ""
    return (
        "" if image is None else _line(IMAGE[0], _IMAGE_LABELS, image, "1"),
        "" if outcome is None else _line(OUTCOME[0], _OUTCOME_LABELS, outcome, "1"),
        "" if outcome is None else _line(OUTCOME_AT[0], ("agent",), (v.agent_id,), at),
    )


class ImageRenderer:
    """The same samples as `ImageCollector`, as exposition text (format 0.0.4), cached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # concurrent scrapes share the cache
        self._cache: dict[str, tuple[ImageReport, tuple[str, str, str]]] = {}

    def warm(self, views: list[AgentView]) -> None:
        """Lay out the lines of newly installed views (the fleet calls this after a commit)."""
        with self._lock:
            stale = [v for v in views if v.image is not None and not self._fresh(v)]
        computed = [(v.agent_id, v.image, _lines(v)) for v in stale]
        with self._lock:
            for agent_id, image, lines in computed:
                if image is not None:
                    self._cache[agent_id] = (image, lines)

    def _fresh(self, v: AgentView) -> bool:
        hit = self._cache.get(v.agent_id)
        return hit is not None and hit[0] is v.image

    def render(self, views: list[AgentView]) -> str:
        with self._lock:
            rows = []
            for v in views:
                if v.image is None:
                    continue
                hit = self._cache.get(v.agent_id)
                if hit is None or hit[0] is not v.image:
                    hit = (v.image, _lines(v))
                    self._cache[v.agent_id] = hit
                rows.append(hit[1])
            if len(self._cache) > len(rows):
                live = {v.agent_id for v in views}
                for gone in [k for k in self._cache if k not in live]:
                    del self._cache[gone]
        out: list[str] = []
        for index, (name, help_text) in enumerate((IMAGE, OUTCOME, OUTCOME_AT)):
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
            out.extend(row[index] for row in rows)
        return "".join(out)

"""The appliance image and last update outcome of each agent on /metrics, two ways.

`ImageCollector` is the prometheus-client reference; `render_image` writes the
same samples as text for the fast path (at most three lines per agent, so no
cache is needed). Only agents that reported an image or an outcome appear: an
agent on an ordinary host has neither, and a missing series says so better than
a series with empty labels. The `agent` label is the one every other per-agent
family uses, so the two join in PromQL (`... * on (agent) group_left ...`).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sennet.controlplane.fleet import AgentView, Fleet

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


def render_image(views: list[AgentView]) -> str:
    """The same samples as `ImageCollector`, as exposition text (format 0.0.4)."""
    out: list[str] = []
    for (name, help_text), kind_lines in (
        (IMAGE, [(_IMAGE_LABELS, _image_values(v), "1") for v in views]),
        (
            OUTCOME,
            [(_OUTCOME_LABELS, _outcome_values(v), "1") for v in views],
        ),
        (
            OUTCOME_AT,
            [
                (("agent",), (v.agent_id,), repr(v.image.at_unix))
                for v in views
                if v.image is not None and v.image.result
            ],
        ),
    ):
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
        out.extend(
            _line(name, labels, values, value)
            for labels, values, value in kind_lines
            if values is not None
        )
    return "".join(out)

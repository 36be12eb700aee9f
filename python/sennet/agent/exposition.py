"""Metric families and the Prometheus text format (0.0.4) for the agent's own /metrics.

The agent used prometheus_client for its read-out: its package import alone
(exposition with wsgiref, urllib.request, the OpenMetrics encoder, the metric
classes) cost the idle agent about 2 MiB of RSS (issue 16, bench/footprint.py)
to render a few dozen families once per scrape. These families take the same
arguments as prometheus_client's `*MetricFamily` classes, and `render` writes
exactly what its `generate_latest` writes for them, byte for byte (a test
renders the same families through prometheus_client and compares): label names
sorted, values in Go's float format, counters suffixed `_total`, info families
`_info` with TYPE gauge. prometheus_client stays a test tool (its parser checks
this output) and the control plane's library.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sennet.common.prom_histogram import go_float

Labels = tuple[tuple[str, str], ...]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Family:
    """One metric family: name, HELP text, type and its samples (name, labels, value)."""

    kind = "untyped"

    def __init__(self, name: str, documentation: str, labels: Sequence[str] | None) -> None:
        self.name = name
        self.documentation = documentation
        self._labelnames = tuple(labels or ())
        self.samples: list[tuple[str, Labels, float]] = []

    def _labels(self, values: Sequence[str], extra: Labels = ()) -> Labels:
        if len(values) != len(self._labelnames):
            raise ValueError(
                f"{self.name}: {len(values)} label values for labels {self._labelnames}"
            )
        return (*zip(self._labelnames, values, strict=True), *extra)

    def exposed_name(self) -> str:
        """The name the text format shows in HELP and TYPE."""
        return self.name


class CounterFamily(Family):
    kind = "counter"

    def __init__(
        self,
        name: str,
        documentation: str,
        value: float | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        # As prometheus_client: the family is named without `_total`, its sample with it.
        super().__init__(name.removesuffix("_total"), documentation, labels)
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append((self.name + "_total", self._labels(labels), value))

    def exposed_name(self) -> str:
        return self.name + "_total"


class GaugeFamily(Family):
    kind = "gauge"

    def __init__(
        self,
        name: str,
        documentation: str,
        value: float | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        super().__init__(name, documentation, labels)
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append((self.name, self._labels(labels), value))


class InfoFamily(Family):
    kind = "gauge"  # the text format has no info type: a gauge of 1 named `_info`

    def __init__(
        self,
        name: str,
        documentation: str,
        value: Mapping[str, str] | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        super().__init__(name, documentation, labels)
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: Mapping[str, str]) -> None:
        merged = dict(self._labels(labels))
        merged.update(value)
        self.samples.append((self.name + "_info", tuple(merged.items()), 1))

    def exposed_name(self) -> str:
        return self.name + "_info"


class HistogramFamily(Family):
    kind = "histogram"

    def __init__(self, name: str, documentation: str, labels: Sequence[str] | None = None) -> None:
        super().__init__(name, documentation, labels)

    def add_metric(
        self, labels: Sequence[str], buckets: Sequence[tuple[str, float]], sum_value: float
    ) -> None:
        """Cumulative (le, count) pairs, `+Inf` last, then `_count` (the last) and `_sum`."""
        for le, count in buckets:
            self.samples.append((self.name + "_bucket", self._labels(labels, (("le", le),)), count))
        self.samples.append((self.name + "_count", self._labels(labels), buckets[-1][1]))
        self.samples.append((self.name + "_sum", self._labels(labels), sum_value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(families: Iterable[Family]) -> bytes:
    """The text format of these families, in the order given (what a scrape returns)."""
    out: list[str] = []
    for f in families:
        name = f.exposed_name()
        help_text = f.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {f.kind}\n")
        for sample_name, labels, value in f.samples:
            if labels:
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels))
                out.append(f"{sample_name}{{{text}}} {go_float(value)}\n")
            else:
                out.append(f"{sample_name} {go_float(value)}\n")
    return "".join(out).encode()

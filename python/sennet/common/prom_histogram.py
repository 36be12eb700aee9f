"""Per-bucket latency counts as a Prometheus histogram: cumulative `le` buckets.

The data plane and the heartbeat keep one count per bucket (not cumulative),
with one more count than bounds (the last is everything above the last bound).
Prometheus wants cumulative counts per upper bound, `+Inf` last and equal to
`_count`. The agent's /metrics and the control plane's both convert here, and
both format `le` the way prometheus-client does, so the fast renderer and the
reference path print the same label values. `go_float` is prometheus-client's
`floatToGoString`, restated here because importing `prometheus_client.utils`
imports the whole package, which the agent does without (a test compares the two).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from itertools import accumulate


def go_float(value: float) -> str:
    """A sample value or `le` bound as Go prints floats (and Prometheus's text format wants).

    Python's repr, but `+Inf`/`-Inf`/`NaN`, and positive values of 10^6 and more in
    exponent form ("1e+06"), as Go switches to exponents sooner than Python.
    """
    d = float(value)
    if math.isinf(d):
        return "+Inf" if d > 0 else "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def le_labels(bounds_s: Sequence[float]) -> tuple[str, ...]:
    """The `le` label values for these upper bounds, `+Inf` appended.

    Memoized: every heartbeat of a fleet carries the same few bound lists, and
    formatting 27 bounds per histogram per heartbeat showed in the control
    plane's write path.
    """
    return _le_labels(tuple(bounds_s))


@functools.lru_cache(maxsize=64)
def _le_labels(bounds_s: tuple[float, ...]) -> tuple[str, ...]:
    return (*(go_float(b) for b in bounds_s), "+Inf")


def cumulative(bounds_s: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """(le, cumulative count) pairs, ready for `HistogramMetricFamily.add_metric`."""
    if len(counts) != len(bounds_s) + 1:
        raise ValueError(f"{len(counts)} counts for {len(bounds_s)} bounds (want bounds + 1)")
    return list(zip(le_labels(bounds_s), (float(c) for c in accumulate(counts)), strict=True))

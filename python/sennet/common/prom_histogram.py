"""Per-bucket latency counts as a Prometheus histogram: cumulative `le` buckets.

The data plane and the heartbeat keep one count per bucket (not cumulative),
with one more count than bounds (the last is everything above the last bound).
Prometheus wants cumulative counts per upper bound, `+Inf` last and equal to
`_count`. The agent's /metrics and the control plane's both convert here, and
both format `le` the way prometheus-client does, so the fast renderer and the
reference path print the same label values.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from itertools import accumulate

from prometheus_client.utils import floatToGoString


def le_labels(bounds_s: Sequence[float]) -> tuple[str, ...]:
    """The `le` label values for these upper bounds, `+Inf` appended.

    Memoized: every heartbeat of a fleet carries the same few bound lists, and
    formatting 27 bounds per histogram per heartbeat showed in the control
    plane's write path.
    """
    return _le_labels(tuple(bounds_s))


@functools.lru_cache(maxsize=64)
def _le_labels(bounds_s: tuple[float, ...]) -> tuple[str, ...]:
    return (*(floatToGoString(b) for b in bounds_s), "+Inf")  # type: ignore[no-untyped-call]


def cumulative(bounds_s: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """(le, cumulative count) pairs, ready for `HistogramMetricFamily.add_metric`."""
    if len(counts) != len(bounds_s) + 1:
        raise ValueError(f"{len(counts)} counts for {len(bounds_s)} bounds (want bounds + 1)")
    return list(zip(le_labels(bounds_s), (float(c) for c in accumulate(counts)), strict=True))

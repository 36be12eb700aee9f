"""Read the data plane's latency histograms (HISTOGRAMS, fixed log2 buckets).

The kernel adds one count per CPU with no atomics; the sum over CPUs is taken
here, once per interval. Values are cumulative since the map was created, the
same as the interface counters, so a lost heartbeat loses nothing.
"""

from __future__ import annotations

import struct

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.record import u64_sum
from sennet.agent.telemetry import LatencyHistogram


class HistogramReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ncpus = libbpf().possible_cpus()

    def read(self, which: layout.Histogram) -> LatencyHistogram:
        base = int(which) * layout.HIST_SLOTS
        slots = [self._slot(base + i) for i in range(layout.HIST_SLOTS)]
        return LatencyHistogram(
            bounds_s=layout.hist_upper_bounds_s(),
            counts=tuple(slots[: layout.HIST_BUCKETS]),
            sum_s=slots[layout.HIST_BUCKETS] / 1e9,
        )

    def _slot(self, key: int) -> int:
        raw = libbpf().lookup(self.fd, struct.pack("<I", key), 8 * self.ncpus)
        return u64_sum(raw, self.ncpus)

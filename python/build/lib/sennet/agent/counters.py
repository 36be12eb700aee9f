"""Counter read-out: sum the per-CPU values into per-interface, per-direction totals.

Per-CPU maps let every CPU count without atomics on the hot path; the price is
paid here, once per interval, by adding up one value per possible CPU.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf


@dataclass(frozen=True)
class DirectionTotals:
    packets: int
    bytes: int


class CounterReader:
    """Reads COUNTERS, EV_COUNTS and RB_DROPS from their fds (any loader, or pinned)."""

    def __init__(self, map_fds: dict[str, int]) -> None:
        self.fds = map_fds
        self.ncpus = libbpf().possible_cpus()

    def _percpu(self, name: str, key: int, dtype: np.dtype[np.generic]) -> np.ndarray:
        size = dtype.itemsize
        raw = libbpf().lookup(self.fds[name], struct.pack("<I", key), size * self.ncpus)
        if raw is None:
            return np.zeros(1, dtype=dtype)
        return np.frombuffer(raw, dtype=dtype, count=self.ncpus)

    def slot_totals(self, slot: int) -> dict[layout.Direction, DirectionTotals]:
        """Totals for one interface slot, summed over CPUs."""
        out = {}
        pair = np.dtype([("packets", "<u8"), ("bytes", "<u8")])
        for direction in layout.Direction:
            values = self._percpu(layout.MAP_COUNTERS, slot * 2 + direction, pair)
            out[direction] = DirectionTotals(
                packets=int(values["packets"].sum(dtype=np.uint64)),
                bytes=int(values["bytes"].sum(dtype=np.uint64)),
            )
        return out

    def by_kind(self, map_name: str) -> dict[layout.EventKind, int]:
        """Per-kind totals from EV_COUNTS (detected) or RB_DROPS (ring full)."""
        u64 = np.dtype("<u8")
        return {
            kind: int(self._percpu(map_name, kind, u64).sum(dtype=np.uint64))
            for kind in layout.EventKind
        }

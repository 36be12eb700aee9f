"""Counter read-out: sum the per-CPU values into per-interface, per-direction totals.

Per-CPU maps let every CPU count without atomics on the hot path; the price is
paid here, once per interval, by adding up one value per possible CPU.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.record import U64_MASK


@dataclass(frozen=True)
class DirectionTotals:
    packets: int
    bytes: int


class CounterReader:
    """Reads COUNTERS, EV_COUNTS and RB_DROPS from their fds (any loader, or pinned)."""

    def __init__(self, map_fds: dict[str, int]) -> None:
        self.fds = map_fds
        self.ncpus = libbpf().possible_cpus()

    def _percpu(self, name: str, key: int, words: int) -> tuple[int, ...]:
        """The value of `key` on every CPU, as u64 words (`words` per CPU; zeros if absent)."""
        raw = libbpf().lookup(self.fds[name], struct.pack("<I", key), 8 * words * self.ncpus)
        if raw is None:
            return (0,) * words
        return struct.unpack_from(f"<{words * self.ncpus}Q", raw)

    def slot_totals(self, slot: int) -> dict[layout.Direction, DirectionTotals]:
        """Totals for one interface slot, summed over CPUs (struct sennet_counter: packets,
        bytes), wrapping at 2**64 like the kernel's counters."""
        out = {}
        for direction in layout.Direction:
            values = self._percpu(layout.MAP_COUNTERS, slot * 2 + direction, 2)
            out[direction] = DirectionTotals(
                packets=sum(values[0::2]) & U64_MASK,
                bytes=sum(values[1::2]) & U64_MASK,
            )
        return out

    def by_kind(self, map_name: str) -> dict[layout.EventKind, int]:
        """Per-kind totals from EV_COUNTS (detected) or RB_DROPS (ring full)."""
        return {kind: sum(self._percpu(map_name, kind, 1)) & U64_MASK for kind in layout.EventKind}

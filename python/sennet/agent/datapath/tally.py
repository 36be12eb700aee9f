"""Totals the agent keeps in a slot of a pinned per-CPU counter map.

Some cumulative figures are counted by the agent, not by the programs: handshakes
and DNS queries it expired as unanswered, flows it removed as ended, flows the
LRU took. Kept in the agent's memory they would start again from 0 with every
agent restart, a reset the control plane and Prometheus would see; kept in a
slot of a pinned map they continue like the kernel's own counters. The programs
never write these slots, so the agent adds to CPU 0's copy without racing them,
and readers sum over CPUs as for every other slot.
"""

from __future__ import annotations

import struct

from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.record import U64_MASK, u64_sum


def read_slot(fd: int, slot: int) -> int:
    """The slot summed over CPUs (0 if absent)."""
    lb = libbpf()
    ncpus = lb.possible_cpus()
    return u64_sum(lb.lookup(fd, struct.pack("<I", slot), 8 * ncpus), ncpus)


def add_to_slot(fd: int, slot: int, n: int) -> None:
    """Add `n` (>= 0) to the slot; only the agent writes it, from one thread."""
    if n <= 0:
        return
    lb = libbpf()
    ncpus = lb.possible_cpus()
    key = struct.pack("<I", slot)
    raw = lb.lookup(fd, key, 8 * ncpus)
    values = list(struct.unpack_from(f"<{ncpus}Q", raw)) if raw is not None else [0] * ncpus
    values[0] = (values[0] + n) & U64_MASK
    lb.update(fd, key, struct.pack(f"<{ncpus}Q", *values))

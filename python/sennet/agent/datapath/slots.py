"""Interface -> counter slot assignment, kept in the pinned IFSLOTS map.

The programs index IFSLOTS by skb->ifindex to find which COUNTERS slot to bump
(0 = not registered). Keeping the assignment in a pinned map (not in the
agent's memory) is what lets a restarted agent find its old counters again. A
slot handed to a new interface is zeroed first, since it may have belonged to
a vanished one. The map is an mmap-able array, read here in one go.
"""

from __future__ import annotations

import logging
import mmap
import struct
from collections.abc import Iterable

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.common.errors import UserError
from sennet.common.log import event

log = logging.getLogger("sennet.agent.datapath")


def read_slots(ifslots_fd: int) -> dict[int, int]:
    """ifindex -> slot for every registered interface, as the kernel sees it now."""
    size = layout.IFINDEX_LIMIT * 8  # array elements are laid out 8-byte aligned
    with mmap.mmap(ifslots_fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as mm:
        table = memoryview(mm).cast("I")  # x86: native order is the kernel's
        try:
            slots = table[::2].tolist()
        finally:
            table.release()  # before the mapping closes
    return {i: s for i, s in enumerate(slots) if s}


def _zero_slot(counters_fd: int, slot: int) -> None:
    lb = libbpf()
    zero = bytes(16 * lb.possible_cpus())
    for direction in layout.Direction:
        lb.update(counters_fd, struct.pack("<I", slot * 2 + direction), zero)


def assign(
    ifslots_fd: int,
    counters_fd: int,
    ifindexes: Iterable[int],
    live: Iterable[int],
    reserved: Iterable[int] = (),
) -> dict[int, int]:
    """Give every ifindex a slot, keeping existing ones; drop entries for vanished interfaces.

    `live` is every ifindex that exists in this namespace now: a pinned entry
    for anything else is stale (the interface was deleted while we were away).
    `reserved` slots are never handed out: they belong to monitored interfaces
    that are gone for the moment and keep their counters for when they return.
    """
    lb = libbpf()
    current = read_slots(ifslots_fd)
    live_set = set(live)
    for ifindex, slot in list(current.items()):
        if ifindex not in live_set:
            lb.update(ifslots_fd, struct.pack("<I", ifindex), struct.pack("<I", 0))
            del current[ifindex]
            event(log, "slot_released", ifindex=ifindex, slot=slot)
    used = set(current.values()) | set(reserved)
    result: dict[int, int] = {}
    for ifindex in ifindexes:
        if ifindex >= layout.IFINDEX_LIMIT:
            raise UserError(
                f"ifindex {ifindex} is beyond what the counters index ({layout.IFINDEX_LIMIT - 1})",
                hint="recreate the interface (ifindexes start low again after a reboot)",
            )
        if ifindex in current:
            result[ifindex] = current[ifindex]
            continue
        free = [s for s in range(1, layout.MAX_IFACES) if s not in used]
        if not free:
            raise UserError(f"more than {layout.MAX_IFACES - 1} interfaces: no counter slot left")
        slot = free[0]
        _zero_slot(counters_fd, slot)
        lb.update(ifslots_fd, struct.pack("<I", ifindex), struct.pack("<I", slot))
        used.add(slot)
        result[ifindex] = slot
        event(log, "slot_assigned", ifindex=ifindex, slot=slot)
    return result


def move(ifslots_fd: int, old_ifindex: int, new_ifindex: int, slot: int) -> None:
    """Point `new_ifindex` at `slot` (an interface came back under a new index), and free the
    old index's entry if it still points there (the kernel may reuse that index for another)."""
    if new_ifindex >= layout.IFINDEX_LIMIT:
        raise UserError(
            f"ifindex {new_ifindex} is beyond what the counters index ({layout.IFINDEX_LIMIT - 1})"
        )
    lb = libbpf()
    lb.update(ifslots_fd, struct.pack("<I", new_ifindex), struct.pack("<I", slot))
    if old_ifindex != new_ifindex and read_slots(ifslots_fd).get(old_ifindex) == slot:
        lb.update(ifslots_fd, struct.pack("<I", old_ifindex), struct.pack("<I", 0))

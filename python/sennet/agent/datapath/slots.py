"""Interface -> counter slot assignment, kept in the pinned IFSLOTS map.

The programs look up skb->ifindex in IFSLOTS to find which COUNTERS slot to
bump. Keeping the assignment in a pinned map (not in the agent's memory) is
what lets a restarted agent find its old counters again. A slot handed to a new
interface is zeroed first, since it may have belonged to a vanished one.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.common.errors import UserError
from sennet.common.log import event

log = logging.getLogger("sennet.agent.datapath")


def read_slots(ifslots_fd: int) -> dict[int, int]:
    """ifindex -> slot, as the kernel sees it now."""
    lb = libbpf()
    out: dict[int, int] = {}
    for key in lb.keys(ifslots_fd, 4):
        value = lb.lookup(ifslots_fd, key, 4)
        if value is not None:
            out[struct.unpack("<I", key)[0]] = struct.unpack("<I", value)[0]
    return out


def _zero_slot(counters_fd: int, slot: int) -> None:
    lb = libbpf()
    zero = bytes(16 * lb.possible_cpus())
    for direction in layout.Direction:
        lb.update(counters_fd, struct.pack("<I", slot * 2 + direction), zero)


def assign(
    ifslots_fd: int, counters_fd: int, ifindexes: Iterable[int], live: Iterable[int]
) -> dict[int, int]:
    """Give every ifindex a slot, keeping existing ones; drop entries for vanished interfaces.

    `live` is every ifindex that exists in this namespace now: a pinned entry
    for anything else is stale (the interface was deleted while we were away).
    """
    lb = libbpf()
    current = read_slots(ifslots_fd)
    live_set = set(live)
    for ifindex, slot in list(current.items()):
        if ifindex not in live_set:
            lb.delete(ifslots_fd, struct.pack("<I", ifindex))
            del current[ifindex]
            event(log, "slot_released", ifindex=ifindex, slot=slot)
    used = set(current.values())
    result: dict[int, int] = {}
    for ifindex in ifindexes:
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

"""Read the flow table once per interval: deltas, top talkers, and what was created, ended, lost.

The kernel only creates flows and counts into them (bpf/flows.h); the agent
owns deletion. Each read walks FLOWS with BPF_MAP_LOOKUP_BATCH in fixed-size
chunks (one syscall per chunk, never one per key) into two buffers. Per chunk
it joins the flows against the previous read, picks the chunk's top talkers
and collects what is to be removed, so the table's keys are never held: the
agent keeps per live flow a 64-bit identity in a dict (identity -> slot) and,
in arrays by slot, the packets and bytes the last read saw. A flow keeps its
slot until it ends or the LRU takes it, so a read updates the arrays in place;
about 170 bytes per flow (the dict and its int objects; 170 MiB at a million).

The work per flow is done by the standard library's C loops, not by Python
bytecode per field: columns come out of the value buffer as strided
memoryviews (`.tolist()`), and the join, the deltas, the in-place updates and
the identities are `map()` over those lists with C callables (dict.get,
operator.sub, array.__setitem__, hash). Only new, ended and evicted flows take
a Python step each. With numpy (before) a read of a million flows took
0.69-0.73 s of CPU and peaked at 97 MiB; this one 1.0-1.1 s and 170 MiB
(bench/flows.py, `flows.read.*`).

A flow's identity is Python's 64-bit hash of its key bytes and its first_ns,
so a flow that the LRU evicted and the kernel created again under the same key
is a new flow, not a continuation. The hash is salted per process, which is
fine: identities never leave the process. Collisions are possible in principle
(about 3e-8 for a million flows) and would merge two flows' deltas for one
interval.

Accounting, exact for each agent lifetime (the table is not pinned; the ended,
lost and evicted totals are kept in pinned FLOW_STATS slots, so they continue
across agent restarts like the kernel's counters, and within one lifetime
their growth obeys):

    created since start = active + ended + lost + evicted

- ended: removed by the agent after a read that saw FIN/RST (state ENDED) or no
  packet for `flow_idle_timeout_s` (their final counts are in that read).
- evicted: flows the agent had read that the LRU pushed out before they ended.
- lost: flows created and evicted before any read saw them, so nothing of them
  was ever reported: the kernel's creation counter (FLOW_STATS, read just
  before the walk) minus the flows the agent saw appear. A flow created,
  evicted and created again within one interval counts twice in the kernel's
  counter and is seen at most once: it counts once as lost. A flow created
  while the walk runs is not yet in the counter the walk is compared with; it
  is recognised by its first_ns (not before the counter read) and counted as
  seen in the next interval instead.
"""

from __future__ import annotations

import ctypes
import heapq
import ipaddress
import mmap
import operator
import struct
import time
from array import array
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import compress, repeat

from sennet.agent.datapath import layout, tally
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.record import u64_sum
from sennet.agent.telemetry import FlowReport, Talker

CHUNK = 32768  # entries per BPF_MAP_LOOKUP_BATCH call (about 3 MB of buffers)
_KS, _VS = layout.FLOW_KEY.itemsize, layout.FLOW.itemsize
_WORDS = _VS // 8  # struct sennet_flow as u64 words: packets, bytes, first_ns, last_ns, ...
assert [layout.FLOW.offset(f) // 8 for f in ("packets", "bytes", "first_ns", "last_ns")] == [
    0, 1, 2, 3,
]  # fmt: skip
_FLAGS_AT, _STATE_AT = layout.FLOW.offset("tcp_flags"), layout.FLOW.offset("state")
_KEY_BYTES = struct.Struct(f"{_KS}s")  # a key as a 1-tuple of bytes, for hashing
_ENDED_TABLE = bytes(1 if b & layout.FLOW_ENDED else 0 for b in range(256))


@dataclass
class _Compact:
    """The flows kept after the last read: identity -> slot, and per slot the cumulative
    counters that read saw and the number of the walk that last met the flow.

    A flow keeps its slot from read to read until it ends or the LRU takes it, so a walk
    updates the counters in place (C loops over the chunk) instead of building the
    whole table again. Slot 0 is never a flow's: its zeros are the base new flows join
    to. Arrays grow as flows come (a walk can meet more flows than the table holds at
    once: entries evicted behind it, others created ahead of it).
    """

    index: dict[int, int]
    packets: array[int]
    bytes: array[int]
    walked: array[int]
    free: list[int]

    @classmethod
    def empty(cls, capacity: int = 0) -> _Compact:
        del capacity  # nothing is sized ahead: the arrays grow with the flows met
        return cls({}, array("Q", [0]), array("Q", [0]), array("Q", [0]), [])

    @property
    def n(self) -> int:
        return len(self.index)

    def slots_for(self, count: int) -> list[int]:
        """`count` slots for new flows: freed ones first, then new rows (zeros)."""
        reuse = min(count, len(self.free))
        out = self.free[len(self.free) - reuse :]
        del self.free[len(self.free) - reuse :]
        grow = count - reuse
        if grow:
            out += range(len(self.packets), len(self.packets) + grow)
            for column in (self.packets, self.bytes, self.walked):
                column.frombytes(bytes(8 * grow))
        return out


@dataclass
class _Walk:
    """What one walk of the table found, summed over its chunks."""

    read: int = 0  # entries in the table at the read
    matched: int = 0  # of those, flows the previous read had kept
    appeared: int = 0  # new, created before the creation counter was read
    young: int = 0  # new, created after it (counted as seen next time)
    remove: list[bytes] = field(default_factory=list)  # keys to delete
    # Candidates for the top talkers: (interval bytes, interval packets, key, tcp_flags).
    top: list[tuple[int, int, bytes, int]] = field(default_factory=list)


class FlowTracker:
    """Per-interval reader of FLOWS; `read()` once per interval, from one thread."""

    def __init__(
        self, flows_fd: int, stats_fd: int, top_n: int, idle_timeout_s: float, chunk: int = CHUNK
    ) -> None:
        self.lb = libbpf()
        self.flows_fd = flows_fd
        self.stats_fd = stats_fd
        self.top_n = top_n
        self.idle_ns = int(idle_timeout_s * 1e9)
        self.capacity = self.lb.map_info(flows_fd).max_entries
        self.ncpus = self.lb.possible_cpus()
        self.chunk = chunk
        # Anonymous mappings, not bytearrays: a bytearray is zeroed, so all 3 MB would be
        # resident from the start; a mapping's pages become resident only as the kernel
        # writes flows into them (an idle appliance's few flows: a page or two).
        self._keys = mmap.mmap(-1, chunk * _KS)
        self._vals = mmap.mmap(-1, chunk * _VS)
        self._token = ctypes.create_string_buffer(64)
        self._prev = _Compact.empty()
        self._walks = 0
        self._lost_reported = 0  # lost flows of this lifetime already added to the pinned slot
        self._seen = 0  # flows seen appear, counted against the creation counter
        self._young = 0
        # The first walk reports nothing; it takes in the flows already there. Those
        # count as created in this lifetime, the ones evicted before it do not.
        cutoff = time.monotonic_ns()
        created = self.created()
        first = self._walk(time.monotonic_ns(), cutoff)
        self.created_base = created - first.appeared

    def created(self) -> int:
        """FLOW_STATS[CREATED] summed over CPUs: flows the kernel ever inserted (pinned)."""
        return self._stat(layout.FLOW_STAT_CREATED)

    def untracked(self) -> int:
        """Packets that found no flow and could not insert one (should stay 0 with an LRU)."""
        return self._stat(layout.FLOW_STAT_UNTRACKED)

    def _stat(self, index: int) -> int:
        raw = self.lb.lookup(self.stats_fd, struct.pack("<I", index), 8 * self.ncpus)
        return u64_sum(raw, self.ncpus)

    def read(self, ifnames: Mapping[int, str]) -> FlowReport:
        """Walk the table, delete what ended, and report the interval that ends now."""
        cutoff = time.monotonic_ns()  # flows first seen from here on are not in `created`
        created = self.created()
        walk = self._walk(time.monotonic_ns(), cutoff)
        lost = max(created - self.created_base - self._seen, 0)
        tally.add_to_slot(self.stats_fd, layout.FLOW_STAT_LOST, lost - self._lost_reported)
        self._lost_reported = max(lost, self._lost_reported)
        return FlowReport(
            active=self._prev.n,  # after the swap: the flows this read kept
            created_total=created,
            ended_total=self._stat(layout.FLOW_STAT_ENDED),
            lost_total=self._stat(layout.FLOW_STAT_LOST),
            top_talkers=self._talkers(walk, ifnames),
            capacity=self.capacity,
            evicted_total=self._stat(layout.FLOW_STAT_EVICTED),
        )

    def _walk(self, now_ns: int, cutoff_ns: int) -> _Walk:
        walk = _Walk()
        table = self._prev
        known = table.n
        self._walks += 1
        keys_at, vals_at = _address(self._keys), _address(self._vals)
        first = True
        while True:
            count, done = self.lb.lookup_batch(
                self.flows_fd, self._token, keys_at, vals_at, self.chunk, first
            )
            first = False
            if count:
                self._chunk(count, now_ns, cutoff_ns, walk)
            if done:
                break
        evicted = known - walk.matched  # read before, not met now, not removed: the LRU's
        if evicted > 0:
            w, walked = self._walks, table.walked
            for fid in [f for f, slot in table.index.items() if walked[slot] != w]:
                table.free.append(table.index.pop(fid))
        tally.add_to_slot(self.stats_fd, layout.FLOW_STAT_EVICTED, evicted)
        self._seen += walk.appeared + self._young
        self._young = walk.young
        self._delete(walk.remove)
        return walk

    def _chunk(self, count: int, now_ns: int, cutoff_ns: int, walk: _Walk) -> None:
        table = self._prev
        raw_keys = memoryview(self._keys)[: count * _KS]
        vals = memoryview(self._vals)[: count * _VS]
        words = vals.cast("Q")  # x86: native order is the kernel's
        packets = words[0::_WORDS].tolist()
        bytes_ = words[1::_WORDS].tolist()
        first_ns = words[2::_WORDS].tolist()
        ids = list(map(hash, zip(_KEY_BYTES.iter_unpack(raw_keys), first_ns, strict=True)))
        slots = list(map(table.index.get, ids, repeat(0, count)))  # 0: not kept last time
        new = slots.count(0)
        young = (
            sum(1 for s, f in zip(slots, first_ns, strict=True) if not s and f >= cutoff_ns)
            if new
            else 0
        )
        walk.read += count
        walk.matched += count - new
        walk.young += young
        walk.appeared += new - young
        d_bytes = list(map(operator.sub, bytes_, map(table.bytes.__getitem__, slots)))
        self._pick_top(vals, raw_keys, packets, slots, d_bytes, walk)
        # In place, for every flow met (new ones write slot 0, reset below): no per-flow bytecode.
        w = self._walks
        deque(map(table.packets.__setitem__, slots, packets), maxlen=0)
        deque(map(table.bytes.__setitem__, slots, bytes_), maxlen=0)
        deque(map(table.walked.__setitem__, slots, repeat(w, count)), maxlen=0)
        table.packets[0] = table.bytes[0] = table.walked[0] = 0
        # last_ns may be a little after now_ns (packets during the walk): compare signed.
        last_ns = vals.cast("q")[3::_WORDS].tolist()
        states = vals[_STATE_AT::_VS].tobytes().translate(_ENDED_TABLE)
        idle_before = now_ns - self.idle_ns
        keep: list[bool] | None = None
        if states.count(1) or min(last_ns) < idle_before:
            keep = [s == 0 and t >= idle_before for s, t in zip(states, last_ns, strict=True)]
            for i in [i for i, k in enumerate(keep) if not k]:
                walk.remove.append(bytes(raw_keys[i * _KS : (i + 1) * _KS]))
                if slots[i]:
                    table.free.append(table.index.pop(ids[i]))
        if new:
            is_new = list(map(operator.not_, slots))
            if keep is not None:
                is_new = list(map(operator.and_, is_new, keep))
            fresh = table.slots_for(sum(is_new))
            deque(map(table.packets.__setitem__, fresh, compress(packets, is_new)), maxlen=0)
            deque(map(table.bytes.__setitem__, fresh, compress(bytes_, is_new)), maxlen=0)
            deque(map(table.walked.__setitem__, fresh, repeat(w)), maxlen=0)
            table.index.update(zip(compress(ids, is_new), fresh, strict=True))

    def _pick_top(
        self,
        vals: memoryview,
        raw_keys: memoryview,
        packets: list[int],
        slots: list[int],
        d_bytes: list[int],
        walk: _Walk,
    ) -> None:
        """Keep the chunk's N largest by interval bytes (a heap, not a full sort); before the
        counters of this read replace the last read's."""
        best = heapq.nlargest(self.top_n, range(len(d_bytes)), key=d_bytes.__getitem__)
        base_packets = self._prev.packets
        for i in best:
            if d_bytes[i] <= 0:
                break
            d_packets = packets[i] - base_packets[slots[i]]
            key = bytes(raw_keys[i * _KS : (i + 1) * _KS])
            walk.top.append((d_bytes[i], d_packets, key, vals[i * _VS + _FLAGS_AT]))

    def _delete(self, keys: list[bytes]) -> None:
        if not keys:
            return
        packed = ctypes.create_string_buffer(b"".join(keys))
        self.lb.delete_batch(self.flows_fd, packed, len(keys), _KS)
        # Counted ended even if the LRU took one in between: its final counts were read.
        tally.add_to_slot(self.stats_fd, layout.FLOW_STAT_ENDED, len(keys))

    def _talkers(self, walk: _Walk, ifnames: Mapping[int, str]) -> tuple[Talker, ...]:
        # Largest first; equal bytes by more packets; then the order they were met in.
        order = sorted(range(len(walk.top)), key=lambda i: (-walk.top[i][0], -walk.top[i][1], i))
        return tuple(
            talker(walk.top[i][2], walk.top[i][1], walk.top[i][0], walk.top[i][3], ifnames)
            for i in order[: self.top_n]
        )


def _address(buf: mmap.mmap) -> int:
    """Where `buf`'s bytes are, for the kernel to copy into (the mapping is never resized)."""
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def _addr(raw: bytes, version: int) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw))


def talker(
    key: bytes, packets: int, bytes_: int, tcp_flags: int, ifnames: Mapping[int, str]
) -> Talker:
    """One packed FLOW_KEY and its interval counts as a report record."""
    saddr, daddr, ifindex, sport, dport, vlan_id, version, l4_proto, direction, _ = (
        layout.FLOW_KEY.struct.unpack(key)
    )
    return Talker(
        ifname=ifnames.get(ifindex, f"if{ifindex}"),
        direction=layout.Direction(direction).label,
        ip_version=version,
        l4_proto=l4_proto,
        saddr=_addr(saddr, version),
        daddr=_addr(daddr, version),
        sport=sport,
        dport=dport,
        vlan_id=vlan_id,
        packets=packets,
        bytes=bytes_,
        tcp_flags=tcp_flags,
    )

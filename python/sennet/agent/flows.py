"""Read the flow table once per interval: deltas, top talkers, and what was created, ended, lost.

The kernel only creates flows and counts into them (bpf/flows.h); the agent
owns deletion. Each read walks FLOWS with BPF_MAP_LOOKUP_BATCH in fixed-size
chunks (one syscall per chunk, never one per key) into two buffers. Per chunk
it joins the flows against the previous read, picks the chunk's top talkers
and collects what is to be removed, so the full table is never held twice: the
agent keeps only a compact record per live flow (a 64-bit identity, packets,
bytes: 24 bytes, in arrays) for this read and the previous one. For the walk
the previous read's identities are put in a dict (identity -> row), dropped
when the walk ends.

The work per flow is done by the standard library's C loops, not by Python
bytecode per field: columns come out of the value buffer as strided
memoryviews (`.tolist()`), and the join, the deltas and the identities are
`map()` over those lists with C callables (dict.get, operator.sub, hash).

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
import operator
import struct
import time
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain, compress, repeat

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
_ZERO_ROW = bytes(8)
_Raw = bytes  # `_Compact` has a field named bytes
_KEY_BYTES = struct.Struct(f"{_KS}s")  # a key as a 1-tuple of bytes, for hashing
_ENDED_TABLE = bytes(1 if b & layout.FLOW_ENDED else 0 for b in range(256))


@dataclass
class _Compact:
    """Identities and cumulative counters of the flows kept after one read, in walk order.

    A walk adds them a chunk at a time (pieces, joined once at the end: growing one
    array chunk by chunk copied it again and again). Counters are u64 rows, read
    through a memoryview; one more row than flows: the last row is zeros, the base
    that new flows join to.
    """

    ids: list[array[int]]  # one array per chunk; emptied once a walk has indexed them
    packets: memoryview
    bytes: memoryview
    n: int = 0
    _pieces: tuple[list[_Raw], list[_Raw]] = field(default_factory=lambda: ([], []))

    @classmethod
    def empty(cls, capacity: int = 0) -> _Compact:
        """No flows. A walk can meet more flows than the table holds at once (entries
        evicted behind it, others created ahead of it): nothing is sized by `capacity`."""
        del capacity
        return cls([], _u64(_ZERO_ROW), _u64(_ZERO_ROW))

    def start(self) -> None:
        self.ids, self.n, self._pieces = [], 0, ([], [])

    def add(self, ids: array[int], packets: _Raw, bytes_: _Raw) -> None:
        self.ids.append(ids)
        self._pieces[0].append(packets)
        self._pieces[1].append(bytes_)
        self.n += len(ids)

    def finish(self) -> None:
        self.packets = _u64(b"".join([*self._pieces[0], _ZERO_ROW]))
        self.bytes = _u64(b"".join([*self._pieces[1], _ZERO_ROW]))
        self._pieces = ([], [])


def _u64(raw: _Raw) -> memoryview:
    return memoryview(raw).cast("Q")  # x86: native order


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
        self._keys = bytearray(chunk * _KS)
        self._vals = bytearray(chunk * _VS)
        self._token = ctypes.create_string_buffer(64)
        self._prev = _Compact.empty()
        self._cur = _Compact.empty()
        self._index: dict[int, int] = {}  # the previous read's identity -> row, during a walk
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
        self._cur.start()
        prev = self._prev
        self._index = dict(zip(chain.from_iterable(prev.ids), range(prev.n), strict=True))
        prev.ids = []  # the index holds them now
        keys_at, vals_at = _address(self._keys), _address(self._vals)
        first = True
        try:
            while True:
                count, done = self.lb.lookup_batch(
                    self.flows_fd, self._token, keys_at, vals_at, self.chunk, first
                )
                first = False
                if count:
                    self._chunk(count, now_ns, cutoff_ns, walk)
                if done:
                    break
        finally:
            self._index = {}
        cur = self._cur
        cur.finish()
        tally.add_to_slot(self.stats_fd, layout.FLOW_STAT_EVICTED, self._prev.n - walk.matched)
        self._seen += walk.appeared + self._young
        self._young = walk.young
        self._delete(walk.remove)
        self._prev, self._cur = cur, self._prev
        return walk

    def _chunk(self, count: int, now_ns: int, cutoff_ns: int, walk: _Walk) -> None:
        prev, cur = self._prev, self._cur
        raw_keys = memoryview(self._keys)[: count * _KS]
        vals = memoryview(self._vals)[: count * _VS]
        words = vals.cast("Q")  # x86: native order is the kernel's
        bytes_ = words[1::_WORDS].tolist()
        first_ns = words[2::_WORDS].tolist()
        ids = list(map(hash, zip(_KEY_BYTES.iter_unpack(raw_keys), first_ns, strict=True)))
        missing = prev.n  # the zero row
        rows = list(map(self._index.get, ids, repeat(missing, count)))
        new = rows.count(missing)
        young = (
            sum(1 for r, f in zip(rows, first_ns, strict=True) if r == missing and f >= cutoff_ns)
            if new
            else 0
        )
        walk.read += count
        walk.matched += count - new
        walk.young += young
        walk.appeared += new - young
        d_bytes = list(map(operator.sub, bytes_, map(prev.bytes.__getitem__, rows)))
        # last_ns may be a little after now_ns (packets during the walk): compare signed.
        last_ns = vals.cast("q")[3::_WORDS].tolist()
        states = vals[_STATE_AT::_VS].tobytes().translate(_ENDED_TABLE)
        idle_before = now_ns - self.idle_ns
        if states.count(1) or min(last_ns) < idle_before:
            keep = [s == 0 and t >= idle_before for s, t in zip(states, last_ns, strict=True)]
            walk.remove += (
                bytes(raw_keys[i * _KS : (i + 1) * _KS]) for i, k in enumerate(keep) if not k
            )
            cur.add(
                array("q", compress(ids, keep)),
                array("Q", compress(words[0::_WORDS].tolist(), keep)).tobytes(),
                array("Q", compress(bytes_, keep)).tobytes(),
            )
        else:
            cur.add(array("q", ids), words[0::_WORDS].tobytes(), words[1::_WORDS].tobytes())
        self._pick_top(vals, raw_keys, words, rows, d_bytes, walk)

    def _pick_top(
        self,
        vals: memoryview,
        raw_keys: memoryview,
        words: memoryview,
        rows: list[int],
        d_bytes: list[int],
        walk: _Walk,
    ) -> None:
        """Keep the chunk's N largest by interval bytes (a heap, not a full sort)."""
        best = heapq.nlargest(self.top_n, range(len(d_bytes)), key=d_bytes.__getitem__)
        base_packets = self._prev.packets
        for i in best:
            if d_bytes[i] <= 0:
                break
            d_packets = words[i * _WORDS] - base_packets[rows[i]]
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


def _address(buf: bytearray) -> int:
    """Where `buf`'s bytes are, for the kernel to copy into (the bytearray is never resized)."""
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

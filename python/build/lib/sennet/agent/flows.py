"""Read the flow table once per interval: deltas, top talkers, and what was created, ended, lost.

The kernel only creates flows and counts into them (bpf/flows.h); the agent
owns deletion. Each read walks FLOWS with BPF_MAP_LOOKUP_BATCH in fixed-size
chunks (one syscall per chunk, never one per key) into numpy buffers. Per chunk
it joins the flows against the previous read, picks the chunk's top talkers
and collects what is to be removed, so the full table is never held twice: the
agent keeps only a compact record per live flow (a 64-bit identity, packets,
bytes: 24 bytes) for this read and the previous one.

A flow's identity is a hash of its key and its first_ns, so a flow that the LRU
evicted and the kernel created again under the same key is a new flow, not a
continuation. Collisions of the 64-bit hash are possible in principle (about
3e-8 for a million flows) and would merge two flows' deltas for one interval.

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
import ipaddress
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from sennet.agent.datapath import layout, tally
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.telemetry import FlowReport, Talker

CHUNK = 32768  # entries per BPF_MAP_LOOKUP_BATCH call (about 3 MB of buffers)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)
_KEY_WORDS = layout.FLOW_KEY_DTYPE.itemsize // 8


def flow_ids(keys: np.ndarray, first_ns: np.ndarray) -> np.ndarray:
    """64-bit identity of each (key, first_ns): a multiply-xor hash over the key's 8-byte words."""
    words = keys.view("<u8").reshape(-1, _KEY_WORDS)
    h = first_ns.astype(np.uint64) * _MIX
    for i in range(_KEY_WORDS):
        h ^= words[:, i]
        h *= _MIX2
        h ^= h >> np.uint64(31)
    return h


@dataclass
class _Compact:
    """Sorted identities and cumulative counters of the flows kept after one read."""

    ids: np.ndarray
    packets: np.ndarray
    bytes: np.ndarray
    n: int = 0

    @classmethod
    def empty(cls, capacity: int) -> _Compact:
        # np.empty maps pages lazily: memory grows with the flows actually held.
        ids, packets, bytes_ = (np.empty(capacity, np.uint64) for _ in range(3))
        return cls(ids, packets, bytes_)

    def room(self, more: int) -> None:
        """Make room for `more` rows. A walk can meet more flows than the table holds at
        once (entries evicted behind it, others created ahead of it): grow then."""
        if self.n + more <= len(self.ids):
            return
        size = max(self.n + more, len(self.ids) * 5 // 4)
        for name in ("ids", "packets", "bytes"):
            grown = np.empty(size, np.uint64)
            grown[: self.n] = getattr(self, name)[: self.n]
            setattr(self, name, grown)


@dataclass
class _Walk:
    """What one walk of the table found, summed over its chunks."""

    read: int = 0  # entries in the table at the read
    matched: int = 0  # of those, flows the previous read had kept
    appeared: int = 0  # new, created before the creation counter was read
    young: int = 0  # new, created after it (counted as seen next time)
    remove: list[np.ndarray] = field(default_factory=list)  # keys to delete
    top: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)


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
        self._keys = np.zeros(chunk, layout.FLOW_KEY_DTYPE)
        self._vals = np.zeros(chunk, layout.FLOW_DTYPE)
        self._token = ctypes.create_string_buffer(64)
        self._prev = _Compact.empty(self.capacity)
        self._cur = _Compact.empty(self.capacity)
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
        return 0 if raw is None else int(np.frombuffer(raw, "<u8").sum(dtype=np.uint64))

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
        cur = self._cur
        cur.n = 0
        first = True
        while True:
            count, done = self.lb.lookup_batch(
                self.flows_fd, self._token, self._keys.ctypes.data, self._vals.ctypes.data,
                self.chunk, first,
            )  # fmt: skip
            first = False
            if count:
                self._chunk(self._keys[:count], self._vals[:count], now_ns, cutoff_ns, walk)
            if done:
                break
        order = np.argsort(cur.ids[: cur.n])
        for arr in (cur.ids, cur.packets, cur.bytes):
            arr[: cur.n] = arr[: cur.n][order]
        tally.add_to_slot(self.stats_fd, layout.FLOW_STAT_EVICTED, self._prev.n - walk.matched)
        self._seen += walk.appeared + self._young
        self._young = walk.young
        self._delete(walk.remove)
        self._prev, self._cur = cur, self._prev
        return walk

    def _chunk(
        self, keys: np.ndarray, vals: np.ndarray, now_ns: int, cutoff_ns: int, walk: _Walk
    ) -> None:
        prev = self._prev
        first_ns = vals["first_ns"]
        ids = flow_ids(keys, first_ns)
        # Sorted needles: searchsorted then walks prev almost in order (4x faster on 1M).
        # Only the columns the join needs are permuted; rows are picked through `order`.
        order = np.argsort(ids)
        ids = ids[order]
        packets = vals["packets"][order]
        bytes_ = vals["bytes"][order]
        if prev.n:
            pos = np.searchsorted(prev.ids[: prev.n], ids)
            np.minimum(pos, prev.n - 1, out=pos)
            found = prev.ids[pos] == ids
            base_p, base_b = prev.packets[pos], prev.bytes[pos]
            base_p[~found] = 0
            base_b[~found] = 0
            d_packets = (packets - base_p).view(np.int64)
            d_bytes = (bytes_ - base_b).view(np.int64)
        else:
            found = np.zeros(len(ids), bool)
            d_packets, d_bytes = packets.view(np.int64), bytes_.view(np.int64)
        matched = int(np.count_nonzero(found))
        young = int(np.count_nonzero(~found & (first_ns[order] >= np.uint64(cutoff_ns))))
        walk.read += len(ids)
        walk.matched += matched
        walk.young += young
        walk.appeared += len(ids) - matched - young
        # last_ns may be a little after now_ns (packets during the walk): compare signed.
        idle = vals["last_ns"].view(np.int64) < now_ns - self.idle_ns
        remove = (((vals["state"] & layout.FLOW_ENDED) != 0) | idle)[order]
        cur = self._cur
        cur.room(len(ids))
        if remove.any():
            keep = ~remove
            k = int(np.count_nonzero(keep))
            cur.ids[cur.n : cur.n + k] = ids[keep]
            cur.packets[cur.n : cur.n + k] = packets[keep]
            cur.bytes[cur.n : cur.n + k] = bytes_[keep]
            walk.remove.append(keys[order[remove]])
        else:
            k = len(ids)
            cur.ids[cur.n : cur.n + k] = ids
            cur.packets[cur.n : cur.n + k] = packets
            cur.bytes[cur.n : cur.n + k] = bytes_
        cur.n += k
        self._pick_top(keys, vals, order, d_packets, d_bytes, walk)

    def _pick_top(
        self,
        keys: np.ndarray,
        vals: np.ndarray,
        order: np.ndarray,
        d_packets: np.ndarray,
        d_bytes: np.ndarray,
        walk: _Walk,
    ) -> None:
        """Keep the chunk's N largest by interval bytes (argpartition, not a full sort)."""
        n = self.top_n
        idx = np.flatnonzero(d_bytes > 0)
        if len(idx) > n:
            idx = idx[np.argpartition(-d_bytes[idx], n - 1)[:n]]
        if len(idx):
            rows = order[idx]
            walk.top.append((keys[rows], d_packets[idx], d_bytes[idx], vals["tcp_flags"][rows]))

    def _delete(self, batches: list[np.ndarray]) -> None:
        if not batches:
            return
        keys = np.concatenate(batches)
        self.lb.delete_batch(self.flows_fd, keys.ctypes.data, len(keys), keys.dtype.itemsize)
        # Counted ended even if the LRU took one in between: its final counts were read.
        tally.add_to_slot(self.stats_fd, layout.FLOW_STAT_ENDED, len(keys))

    def _talkers(self, walk: _Walk, ifnames: Mapping[int, str]) -> tuple[Talker, ...]:
        if not walk.top:
            return ()
        keys = np.concatenate([t[0] for t in walk.top])
        d_packets = np.concatenate([t[1] for t in walk.top])
        d_bytes = np.concatenate([t[2] for t in walk.top])
        flags = np.concatenate([t[3] for t in walk.top])
        # Largest first; equal bytes by more packets; then a stable order of the keys.
        order = np.lexsort((np.arange(len(keys)), -d_packets, -d_bytes))[: self.top_n]
        return tuple(
            talker(keys[i], int(d_packets[i]), int(d_bytes[i]), int(flags[i]), ifnames)
            for i in order
        )


def _addr(raw: np.ndarray, version: int) -> str:
    data = bytes(raw)
    if version == 4:
        return str(ipaddress.IPv4Address(data[:4]))
    return str(ipaddress.IPv6Address(data))


def talker(
    key: np.void, packets: int, bytes_: int, tcp_flags: int, ifnames: Mapping[int, str]
) -> Talker:
    """One row of FLOW_KEY_DTYPE and its interval counts as a report record."""
    version = int(key["ip_version"])
    ifindex = int(key["ifindex"])
    return Talker(
        ifname=ifnames.get(ifindex, f"if{ifindex}"),
        direction=layout.Direction(int(key["direction"])).label,
        ip_version=version,
        l4_proto=int(key["l4_proto"]),
        saddr=_addr(key["saddr"], version),
        daddr=_addr(key["daddr"], version),
        sport=int(key["sport"]),
        dport=int(key["dport"]),
        vlan_id=int(key["vlan_id"]),
        packets=packets,
        bytes=bytes_,
        tcp_flags=tcp_flags,
    )

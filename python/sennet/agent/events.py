"""Ring-buffer consumer: drain EVENTS in bulk, count by kind, keep the newest events.

Why not libbpf's ring_buffer__poll with a Python callback: a ctypes callback
per record tops out near 2 M records/s and spends that core doing it. Instead
the ring is mapped directly, the way libbpf itself does it: the consumer page
read-write, the producer page plus the data area read-only. The kernel maps
the data area twice in a row, so a run of records that wraps the ring is still
contiguous in our view and a numpy structured array can decode thousands of
records in one call. The consumer position is advanced once per batch.

Memory order: the producer position is read first, then the records; on x86
(the appliance's architecture) loads are not reordered with other loads, and
the kernel publishes a record by clearing its BUSY bit after writing it, so a
record without BUSY below the producer position is complete.

Draining runs on a timer as well as on epoll readiness: a producer that
submits with BPF_RB_NO_WAKEUP never wakes epoll.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import mmap
import select
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from traceback import format_exc

import numpy as np

from sennet.agent.datapath import layout
from sennet.agent.snapshot import Event
from sennet.common.log import event

log = logging.getLogger("sennet.agent.events")

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30


def _check_size(size: int) -> None:
    if size & (size - 1) or size % mmap.PAGESIZE:
        raise ValueError(f"ring size {size} is not a power-of-two multiple of the page size")


@dataclass(frozen=True)
class ConsumerStats:
    consumed: int  # records decoded since this consumer started
    by_kind: dict[layout.EventKind, int]
    skipped: int  # discarded or foreign-sized records passed over


def decode(records: np.ndarray) -> list[Event]:
    """Turn EVENT_DTYPE rows into typed Event objects (for the few that are kept)."""
    out = []
    for r in records:
        version = int(r["ip_version"])
        saddr = daddr = None
        if version == 4:
            saddr = str(ipaddress.IPv4Address(bytes(r["saddr"][:4])))
            daddr = str(ipaddress.IPv4Address(bytes(r["daddr"][:4])))
        elif version == 6:
            saddr = str(ipaddress.IPv6Address(bytes(r["saddr"])))
            daddr = str(ipaddress.IPv6Address(bytes(r["daddr"])))
        try:
            kind = layout.EventKind(int(r["kind"]))
        except ValueError:
            continue  # a kind this agent does not know (newer programs): counted, not decoded
        out.append(
            Event(
                ts_ns=int(r["ts_ns"]),
                ifindex=int(r["ifindex"]),
                direction=layout.Direction(int(r["direction"]) & 1),
                kind=kind,
                pkt_len=int(r["pkt_len"]),
                ip_version=version,
                l4_proto=int(r["l4_proto"]),
                sport=int(r["sport"]),
                dport=int(r["dport"]),
                eth_proto=int(r["eth_proto"]),
                tcp_flags=int(r["tcp_flags"]),
                vlan_tags=int(r["vlan_tags"]),
                saddr=saddr,
                daddr=daddr,
            )
        )
    return out


class RingBufferConsumer:
    """Owns the mappings of one BPF ring buffer and drains it."""

    def __init__(
        self,
        map_fd: int,
        size: int,
        recent_max: int = 256,
        on_batch: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        _check_size(size)
        page = mmap.PAGESIZE
        cons_mm = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        data_mm = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self.fd = map_fd
        self._mappings: tuple[mmap.mmap, ...] = (cons_mm, data_mm)
        self._bind(cons_mm, data_mm, size, page, recent_max, on_batch)

    @classmethod
    def over(
        cls,
        consumer_page: bytearray,
        producer_and_data: bytearray,
        size: int,
        recent_max: int = 256,
        on_batch: Callable[[np.ndarray], None] | None = None,
    ) -> RingBufferConsumer:
        """A consumer of memory laid out as the kernel maps a ring, without a kernel.

        `consumer_page` holds the consumer position (u64 at offset 0);
        `producer_and_data` is one page holding the producer position, then the
        data area twice in a row (the caller keeps both copies equal, as the
        kernel's double mapping does). For tests of `drain()`; `run()` needs a
        map fd to poll and is not available on such a consumer.
        """
        _check_size(size)
        page = mmap.PAGESIZE
        if len(consumer_page) < 8 or len(producer_and_data) != page + 2 * size:
            raise ValueError("buffers do not have the kernel's ring layout")
        self = cls.__new__(cls)
        self.fd = -1
        self._mappings = ()
        self._bind(consumer_page, producer_and_data, size, page, recent_max, on_batch)
        return self

    def _bind(
        self,
        consumer_page: mmap.mmap | bytearray,
        producer_and_data: mmap.mmap | bytearray,
        size: int,
        page: int,
        recent_max: int,
        on_batch: Callable[[np.ndarray], None] | None,
    ) -> None:
        self.size = size
        self.mask = size - 1
        self._page = page
        self._data_mm = producer_and_data
        self._cons = ctypes.c_uint64.from_buffer(consumer_page)  # one 8-byte store per update
        self._prod = np.frombuffer(producer_and_data, dtype="<u8", count=1)
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._kinds = np.zeros(256, dtype=np.uint64)
        self._consumed = 0
        self._skipped = 0
        self._recent: deque[np.ndarray] = deque()
        self._recent_len = 0
        self._recent_max = recent_max
        self._recent_dropped = 0

    def close(self) -> None:
        del self._cons, self._prod, self._data_mm
        for mapping in self._mappings:
            mapping.close()

    # -- draining -------------------------------------------------------------

    def drain(self) -> int:
        """Consume every complete record available now; returns how many were decoded."""
        cons = self._cons.value
        prod = int(self._prod[0])
        decoded = 0
        while cons < prod:
            off = cons & self.mask
            n = (prod - cons) // layout.RECORD_SIZE
            if n:
                recs = np.frombuffer(
                    self._data_mm,
                    dtype=layout.RECORD_DTYPE,
                    count=n,
                    offset=self._page + off,
                )
                lens = recs["len"]
                plain = lens & ~np.uint32(DISCARD_BIT)
                irregular = np.flatnonzero(plain != layout.EVENT_SIZE)  # BUSY or another size
                if irregular.size:
                    n = int(irregular[0])
                    recs, lens = recs[:n], lens[:n]
            if n:
                kept = recs["ev"]  # a view into the ring: valid until `cons` moves past it
                discarded = (lens & DISCARD_BIT) != 0
                if discarded.any():
                    kept = kept[~discarded]  # a copy, only when the program discarded some
                self._absorb(kept, skipped=n - kept.shape[0])
                decoded += kept.shape[0]
                cons += n * layout.RECORD_SIZE
                self._cons.value = cons
                continue
            # The record at `cons` is busy, or not one of ours: look at it alone.
            hdr = int(
                np.frombuffer(self._data_mm, dtype="<u4", count=1, offset=self._page + off)[0]
            )
            if hdr & BUSY_BIT:
                break  # still being written; records after it wait their turn
            length = hdr & ~(BUSY_BIT | DISCARD_BIT)
            if length == layout.EVENT_SIZE:
                # It was busy when the batch looked and was committed since: one of ours.
                # Skipping it here would lose an event; take it with the next batch.
                continue
            cons += (length + layout.RINGBUF_HDR_SIZE + 7) & ~7
            self._cons.value = cons
            with self._lock:
                self._skipped += 1
            prod = max(prod, int(self._prod[0]))
            continue
        return decoded

    def _absorb(self, events: np.ndarray, skipped: int) -> None:
        """Count a batch by kind and keep its newest `recent_max` records.

        `events` may be a view into the ring (called before the consumer position
        moves on): only what is kept past this call is copied, the recent tail (at
        most `recent_max` records), not the whole batch; at 1 M events/s that
        copy was a share of the consumer's CPU for nothing.
        """
        counts = np.bincount(events["kind"], minlength=256).astype(np.uint64)
        with self._lock:
            self._kinds += counts
            self._consumed += events.shape[0]
            self._skipped += skipped
            if self._recent_max and events.shape[0]:
                tail = events[-self._recent_max :].copy()
                self._recent_dropped += events.shape[0] - tail.shape[0]
                self._recent.append(tail)
                self._recent_len += tail.shape[0]
                while self._recent_len - self._recent[0].shape[0] >= self._recent_max:
                    old = self._recent.popleft()
                    self._recent_len -= old.shape[0]
                    self._recent_dropped += old.shape[0]
            else:
                self._recent_dropped += events.shape[0]
        if self._on_batch is not None:
            self._on_batch(events.copy())  # the callee may keep it; the ring moves on

    # -- read-out -------------------------------------------------------------

    def stats(self) -> ConsumerStats:
        with self._lock:
            kinds = {k: int(self._kinds[k]) for k in layout.EventKind}
            return ConsumerStats(consumed=self._consumed, by_kind=kinds, skipped=self._skipped)

    def take_recent(self) -> tuple[list[Event], int]:
        """The newest events (at most recent_max) since the last call, and how many fell off."""
        with self._lock:
            chunks = list(self._recent)
            self._recent.clear()
            self._recent_len = 0
            dropped, self._recent_dropped = self._recent_dropped, 0
        if not chunks:
            return [], dropped
        merged = np.concatenate(chunks)
        extra = merged.shape[0] - self._recent_max
        if extra > 0:
            merged = merged[extra:]
            dropped += extra
        return decode(merged), dropped

    # -- the drain thread -----------------------------------------------------

    def run(self, stop: threading.Event, tick_s: float = 0.05) -> None:
        """Drain until `stop` is set: on epoll readiness, and at least every `tick_s`."""
        ep = select.epoll()
        try:
            ep.register(self.fd, select.EPOLLIN)
            while not stop.is_set():
                ep.poll(tick_s)
                self.drain()
            self.drain()
        except Exception as exc:
            event(log, "consumer_failed", logging.ERROR, error=repr(exc), exc=format_exc())
            raise
        finally:
            ep.close()
            event(log, "consumer_stopped", consumed=self._consumed)

"""Ring-buffer consumer: drain EVENTS in bulk, count by kind, keep the newest events.

Why not libbpf's ring_buffer__poll with a Python callback: a ctypes callback
per record tops out near 2 M records/s and spends that core doing it. Instead
the ring is mapped directly, the way libbpf itself does it: the consumer page
read-write, the producer page plus the data area read-only. The kernel maps
the data area twice in a row, so a run of records that wraps the ring is still
contiguous in our view and a batch of thousands of records is handled with a
few calls that each run over the whole batch in C: records are fixed-size, so
a strided slice of the mapping (`view[off::RECORD_SIZE]`) gathers every
record's header or kind byte at once; a batch whose headers equal the expected
pattern is complete and ours, `bytes.count` counts it by kind, and only the
recent tail that is kept is copied. The consumer position is advanced once per
batch.

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
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from traceback import format_exc

from sennet.agent.datapath import layout
from sennet.agent.snapshot import Event
from sennet.common.log import event

log = logging.getLogger("sennet.agent.events")

BUSY_BIT = 1 << 31
# The least time between two drains that found records (see RingBufferConsumer.run).
COALESCE_S = 0.005
DISCARD_BIT = 1 << 30

_KIND_AT = layout.RINGBUF_HDR_SIZE + layout.EVENT.offset("kind")  # within a record
_KIND_BYTES = {kind: bytes([kind]) for kind in layout.EventKind}
_LEN_BYTES = tuple(bytes([b]) for b in struct.pack("<I", layout.EVENT_SIZE))  # committed, kept
BATCH_MAX = 4096  # records copied out of the ring at a time (about 300 KB)
_STRIP_HEADERS = struct.Struct(f"<{layout.RINGBUF_HDR_SIZE}x{layout.EVENT_SIZE}s")
assert _STRIP_HEADERS.size == layout.RECORD_SIZE


def _check_size(size: int) -> None:
    if size & (size - 1) or size % mmap.PAGESIZE:
        raise ValueError(f"ring size {size} is not a power-of-two multiple of the page size")


@dataclass(frozen=True)
class ConsumerStats:
    consumed: int  # records decoded since this consumer started
    by_kind: dict[layout.EventKind, int]
    skipped: int  # discarded or foreign-sized records passed over


def decode(events: bytes | bytearray | memoryview) -> list[Event]:
    """Turn packed events (EVENT_SIZE bytes each) into typed Event objects (for the few kept)."""
    out = []
    for (
        ts_ns, ifindex, pkt_len, direction, kind_v, version, l4_proto,
        sport, dport, eth_proto, tcp_flags, vlan_tags, _pad, saddr_b, daddr_b,
    ) in layout.EVENT.struct.iter_unpack(events):  # fmt: skip
        saddr = daddr = None
        if version == 4:
            saddr = str(ipaddress.IPv4Address(saddr_b[:4]))
            daddr = str(ipaddress.IPv4Address(daddr_b[:4]))
        elif version == 6:
            saddr = str(ipaddress.IPv6Address(saddr_b))
            daddr = str(ipaddress.IPv6Address(daddr_b))
        try:
            kind = layout.EventKind(kind_v)
        except ValueError:
            continue  # a kind this agent does not know (newer programs): counted, not decoded
        out.append(
            Event(
                ts_ns=ts_ns,
                ifindex=ifindex,
                direction=layout.Direction(direction & 1),
                kind=kind,
                pkt_len=pkt_len,
                ip_version=version,
                l4_proto=l4_proto,
                sport=sport,
                dport=dport,
                eth_proto=eth_proto,
                tcp_flags=tcp_flags,
                vlan_tags=vlan_tags,
                saddr=saddr,
                daddr=daddr,
            )
        )
    return out


def strip_headers(records: bytes | memoryview) -> bytes:
    """The events of whole ring records (RECORD_SIZE each), packed, without their headers."""
    return b"".join(ev for (ev,) in _STRIP_HEADERS.iter_unpack(records))


def _all_committed(raw: bytes, n: int) -> bool:
    """Whether the first `n` records in `raw` are committed records of ours, none discarded.

    Each record's length word must be EVENT_SIZE with no BUSY or DISCARD bit: its
    four bytes are gathered across the batch by slices with a step (a C loop
    over bytes; a strided memoryview is several times slower), four compares.
    """
    rs = layout.RECORD_SIZE
    end = n * rs
    return all(raw[i:end:rs] == _LEN_BYTES[i] * n for i in range(4))


def _committed_prefix(raw: bytes, n: int) -> int:
    """How many leading records of `raw` are committed records of ours (known: not all).

    A bisection over prefixes: each step checks a prefix in a few C calls, so
    a batch costs about log2(n) of them, not n Python steps.
    """
    lo, hi = 0, n  # the first `lo` records are ours; the first `hi` are not all ours
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _all_committed(raw, mid):
            lo = mid
        else:
            hi = mid
    return lo


class RingBufferConsumer:
    """Owns the mappings of one BPF ring buffer and drains it."""

    def __init__(
        self,
        map_fd: int,
        size: int,
        recent_max: int = 256,
        on_batch: Callable[[bytes], None] | None = None,
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
        on_batch: Callable[[bytes], None] | None = None,
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
        on_batch: Callable[[bytes], None] | None,
    ) -> None:
        self.size = size
        self.mask = size - 1
        self._cons = ctypes.c_uint64.from_buffer(consumer_page)  # one 8-byte store per update
        whole = memoryview(producer_and_data)
        self._prod = whole[:8].cast("Q")  # x86: native order is the kernel's
        self._data = whole[page:]  # both copies of the data area
        self._views = (whole, self._prod, self._data)
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._kinds = dict.fromkeys(layout.EventKind, 0)
        self._consumed = 0
        self._skipped = 0
        self._recent: deque[bytes] = deque()  # whole records, newest last
        self._recent_len = 0
        self._recent_max = recent_max
        self._recent_dropped = 0

    def close(self) -> None:
        for view in reversed(self._views):
            view.release()  # a mapping with views into it cannot be closed
        del self._cons, self._prod, self._data, self._views
        for mapping in self._mappings:
            mapping.close()

    # -- draining -------------------------------------------------------------

    def drain(self) -> int:
        """Consume every complete record available now; returns how many were decoded."""
        rs = layout.RECORD_SIZE
        data = self._data
        cons = self._cons.value
        prod = self._prod[0]
        decoded = 0
        while cons < prod:
            off = cons & self.mask
            n = min((prod - cons) // rs, BATCH_MAX)
            raw = data[off : off + n * rs].tobytes() if n else b""
            if n and not _all_committed(raw, n):  # busy, discarded or foreign among them
                n = _committed_prefix(raw, n)
            if n:
                self._absorb(raw[: n * rs], n)
                decoded += n
                cons += n * rs
                self._cons.value = cons
                continue
            # The record at `cons` is busy, discarded or not one of ours: look at it alone.
            hdr = int.from_bytes(data[off : off + 4], "little")
            if hdr & BUSY_BIT:
                break  # still being written; records after it wait their turn
            length = hdr & ~(BUSY_BIT | DISCARD_BIT)
            if length == layout.EVENT_SIZE and not hdr & DISCARD_BIT:
                # It was busy when the batch looked and was committed since: one of ours.
                # Skipping it here would lose an event; take it with the next batch.
                continue
            cons += (length + layout.RINGBUF_HDR_SIZE + 7) & ~7
            self._cons.value = cons
            with self._lock:
                self._skipped += 1
            prod = max(prod, self._prod[0])
        return decoded

    def _absorb(self, records: bytes, n: int) -> None:
        """Count `n` committed records of ours by kind and keep the newest `recent_max`.

        `records` is a copy of at most BATCH_MAX records; what is kept past this
        call is the recent tail (at most `recent_max` records, headers still on:
        they are taken off when read), not the batch.
        """
        rs = layout.RECORD_SIZE
        kinds = records[_KIND_AT::rs]  # one byte per record
        counts = []
        left = n
        for kind, b in _KIND_BYTES.items():  # usually one kind makes the whole batch
            c = kinds.count(b)
            if c:
                counts.append((kind, c))
                left -= c
                if not left:
                    break
        with self._lock:
            for kind, c in counts:
                self._kinds[kind] += c
            self._consumed += n
            if self._recent_max:
                keep = min(n, self._recent_max)
                self._recent.append(records[(n - keep) * rs :] if keep < n else records)
                self._recent_dropped += n - keep
                self._recent_len += keep
                while self._recent_len - len(self._recent[0]) // rs >= self._recent_max:
                    old = len(self._recent.popleft()) // rs
                    self._recent_len -= old
                    self._recent_dropped += old
            else:
                self._recent_dropped += n
        if self._on_batch is not None:
            self._on_batch(strip_headers(records))

    # -- read-out -------------------------------------------------------------

    def stats(self) -> ConsumerStats:
        with self._lock:
            return ConsumerStats(
                consumed=self._consumed, by_kind=dict(self._kinds), skipped=self._skipped
            )

    def take_recent(self) -> tuple[list[Event], int]:
        """The newest events (at most recent_max) since the last call, and how many fell off."""
        with self._lock:
            chunks = list(self._recent)
            self._recent.clear()
            self._recent_len = 0
            dropped, self._recent_dropped = self._recent_dropped, 0
        if not chunks:
            return [], dropped
        merged = b"".join(chunks)
        extra = len(merged) // layout.RECORD_SIZE - self._recent_max
        if extra > 0:
            merged = merged[extra * layout.RECORD_SIZE :]
            dropped += extra
        return decode(strip_headers(merged)), dropped

    # -- the drain thread -----------------------------------------------------

    def run(
        self, stop: threading.Event, tick_s: float = 0.05, coalesce_s: float = COALESCE_S
    ) -> None:
        """Drain until `stop` is set: on epoll readiness, and at least every `tick_s`.

        After a drain that found records it waits `coalesce_s` before polling again. The
        kernel wakes a consumer for the first record submitted after it caught up, so a
        consumer that keeps up is woken for nearly every burst: at 1 M events/s in 10 ms
        bursts that was the whole cost (per wake-up, not per event). Waiting lets the
        records of the next few milliseconds be taken in one batch; the ring holds far more
        than that (a 64 MiB ring: ~930,000 records, ~0.9 s at 1 M/s)."""
        ep = select.epoll()
        try:
            ep.register(self.fd, select.EPOLLIN)
            while not stop.is_set():
                ep.poll(tick_s)
                if self.drain() and coalesce_s > 0:
                    stop.wait(coalesce_s)
            self.drain()
        except Exception as exc:
            event(log, "consumer_failed", logging.ERROR, error=repr(exc), exc=format_exc())
            raise
        finally:
            ep.close()
            event(log, "consumer_stopped", consumed=self._consumed)

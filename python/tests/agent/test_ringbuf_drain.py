"""The ring-buffer drain on plain memory laid out as the kernel maps a BPF ring buffer.

No kernel, no root: a fake producer reserves, writes, commits and discards
records the way kernel/bpf/ringbuf.c does (an 8-byte header whose length word
carries the BUSY bit until commit and the DISCARD bit for a discarded record;
records 8-byte aligned; the producer position advanced at reserve time; a
reservation refused when it would put the producer more than size-1 bytes ahead
of the consumer). The data area exists twice in a row, as the kernel maps it, so
a record that wraps the end of the ring is contiguous in the consumer's view.
The drain must decode exactly our committed events, in order; stop at a busy
record without passing it; skip discarded and foreign-sized records without
decoding them; and account for every record offered.
"""

from __future__ import annotations

import mmap
import random
import struct
from dataclasses import dataclass, field

import pytest

from sennet.agent import events
from sennet.agent.datapath import layout
from sennet.agent.datapath.layout import EventKind
from sennet.agent.events import RingBufferConsumer

# From include/uapi/linux/bpf.h, written out here rather than taken from the code under test.
BPF_RINGBUF_BUSY_BIT = 1 << 31
BPF_RINGBUF_DISCARD_BIT = 1 << 30
BPF_RINGBUF_HDR_SZ = 8
PAGE = mmap.PAGESIZE
RING = PAGE  # one page: 56 of our records, so tests wrap it often
OURS = layout.EVENT_SIZE
FOREIGN_MARK = 0xDEAD_BEEF_0BAD_F00D  # what a foreign record's payload is filled with


def record_size(length: int) -> int:
    return (length + BPF_RINGBUF_HDR_SZ + 7) & ~7


def our_event(seq: int, kind: EventKind = EventKind.LARGE_PACKET) -> bytes:
    return layout.EVENT.pack(
        ts_ns=seq,
        ifindex=7,
        pkt_len=1500 + seq % 100,
        kind=kind,
        ip_version=4,
        sport=1000 + seq % 5000,
        dport=53,
        saddr=bytes((10, 1, seq >> 8 & 0xFF, seq & 0xFF)).ljust(16, b"\0"),
        daddr=bytes((10, 1, 0, 2)).ljust(16, b"\0"),
    )


def foreign_payload(length: int) -> bytes:
    """Bytes that decode to nonsense (ts_ns = FOREIGN_MARK) if anyone mistakes them for ours."""
    return (struct.pack("<Q", FOREIGN_MARK) * (length // 8 + 1))[:length]


@dataclass
class FakeRing:
    """The kernel's half of a BPF ring buffer, on two bytearrays the consumer reads."""

    size: int
    start: int = 0
    consumer_page: bytearray = field(init=False)
    producer_and_data: bytearray = field(init=False)
    prod: int = field(init=False)
    refused: int = 0

    def __post_init__(self) -> None:
        self.consumer_page = bytearray(PAGE)
        self.producer_and_data = bytearray(PAGE + 2 * self.size)
        self.prod = self.start
        struct.pack_into("<Q", self.consumer_page, 0, self.start)
        struct.pack_into("<Q", self.producer_and_data, 0, self.start)

    @property
    def cons(self) -> int:
        return int(struct.unpack_from("<Q", self.consumer_page, 0)[0])

    def _put(self, pos: int, blob: bytes) -> None:
        """Write at ring position `pos` into both copies of the data area, wrapping."""
        off = pos & (self.size - 1)
        first = min(len(blob), self.size - off)
        for base in (PAGE, PAGE + self.size):
            self.producer_and_data[base + off : base + off + first] = blob[:first]
            self.producer_and_data[base : base + len(blob) - first] = blob[first:]

    def reserve(self, length: int, payload: bytes) -> int | None:
        """bpf_ringbuf_reserve + filling the record: header BUSY, producer position moved."""
        new_prod = self.prod + record_size(length)
        if new_prod - self.cons > self.size - 1:
            self.refused += 1
            return None
        pos = self.prod
        self._put(pos, struct.pack("<II", length | BPF_RINGBUF_BUSY_BIT, 0x1234))
        self._put(pos + BPF_RINGBUF_HDR_SZ, payload)
        self.prod = new_prod
        struct.pack_into("<Q", self.producer_and_data, 0, new_prod)
        return pos

    def commit(self, pos: int, length: int, discard: bool = False) -> None:
        """bpf_ringbuf_submit / bpf_ringbuf_discard: clear BUSY, maybe set DISCARD."""
        self._put(pos, struct.pack("<I", length | (BPF_RINGBUF_DISCARD_BIT if discard else 0)))

    def emit(self, length: int, payload: bytes, discard: bool = False) -> int | None:
        pos = self.reserve(length, payload)
        if pos is not None:
            self.commit(pos, length, discard)
        return pos

    def consumer(self) -> tuple[RingBufferConsumer, list[bytes]]:
        batches: list[bytes] = []
        c = RingBufferConsumer.over(
            self.consumer_page, self.producer_and_data, self.size, 0, batches.append
        )
        return c, batches


def seqs(batches: list[bytes]) -> list[int]:
    """ts_ns of every event handed over, read straight from the bytes (not through decode)."""
    return [t for b in batches for (t,) in struct.iter_unpack("<Q56x", b)]


def test_the_bits_and_header_size_are_the_kernels() -> None:
    assert (events.BUSY_BIT, events.DISCARD_BIT) == (BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT)
    assert layout.RINGBUF_HDR_SIZE == BPF_RINGBUF_HDR_SZ
    assert record_size(OURS) == layout.RECORD_SIZE


def test_records_that_wrap_the_end_of_the_ring_decode_whole() -> None:
    # Positions are u64 and keep counting; start past 2**32, 40 bytes before the end.
    ring = FakeRing(RING, start=(1 << 33) + 7 * RING - 40)
    consumer, batches = ring.consumer()
    for s in range(10):
        assert ring.emit(OURS, our_event(s)) is not None
    assert consumer.drain() == 10
    decoded = events.decode(b"".join(batches))
    assert [e.ts_ns for e in decoded] == list(range(10))
    assert [(e.pkt_len, e.sport, e.saddr) for e in decoded] == [
        (1500 + s, 1000 + s, f"10.1.0.{s}") for s in range(10)
    ]
    assert ring.cons == ring.prod == (1 << 33) + 7 * RING - 40 + 10 * layout.RECORD_SIZE
    for rnd in range(1, 40):  # round after round across the end of the ring
        for s in range(rnd * 50, rnd * 50 + 50):
            assert ring.emit(OURS, our_event(s)) is not None
        assert consumer.drain() == 50
        assert seqs(batches)[-50:] == list(range(rnd * 50, rnd * 50 + 50))
    assert consumer.stats().consumed == 10 + 39 * 50 and ring.cons == ring.prod


@pytest.mark.parametrize("busy_length", [OURS, 100], ids=["our_size", "foreign_size"])
def test_the_drain_stops_at_a_busy_record_and_never_passes_it(busy_length: int) -> None:
    ring = FakeRing(RING, start=RING - 2 * layout.RECORD_SIZE)  # the busy one sits at the wrap
    consumer, batches = ring.consumer()
    ring.emit(OURS, our_event(1))
    ring.emit(OURS, our_event(2))
    payload = our_event(3) if busy_length == OURS else foreign_payload(busy_length)
    busy = ring.reserve(busy_length, payload)
    assert busy is not None
    ring.emit(OURS, our_event(4))
    ring.emit(OURS, our_event(5))
    assert consumer.drain() == 2
    assert (seqs(batches), ring.cons) == ([1, 2], busy)
    assert consumer.drain() == 0  # still busy: nothing moves, however often we look
    assert (seqs(batches), ring.cons) == ([1, 2], busy)
    ring.commit(busy, busy_length)
    assert consumer.drain() == (3 if busy_length == OURS else 2)
    assert seqs(batches) == ([1, 2, 3, 4, 5] if busy_length == OURS else [1, 2, 4, 5])
    assert ring.cons == ring.prod
    assert consumer.stats().skipped == (0 if busy_length == OURS else 1)


def test_a_busy_first_record_holds_the_whole_ring() -> None:
    ring = FakeRing(RING)
    consumer, batches = ring.consumer()
    busy = ring.reserve(OURS, our_event(1))
    assert busy is not None
    for s in range(2, 20):
        ring.emit(OURS, our_event(s))
    assert (consumer.drain(), ring.cons, seqs(batches)) == (0, 0, [])
    ring.commit(busy, OURS)
    assert consumer.drain() == 19 and seqs(batches) == list(range(1, 20))


def test_discarded_records_are_skipped_and_not_decoded() -> None:
    ring = FakeRing(RING, start=RING - 3 * layout.RECORD_SIZE)
    consumer, batches = ring.consumer()
    for s in range(1, 9):
        ring.emit(
            OURS, our_event(s, EventKind.LAND if s % 3 == 0 else EventKind.TCP_XMAS), s % 3 == 0
        )
    assert consumer.drain() == 6
    assert seqs(batches) == [1, 2, 4, 5, 7, 8]
    stats = consumer.stats()
    assert (stats.consumed, stats.skipped) == (6, 2)
    assert (stats.by_kind[EventKind.TCP_XMAS], stats.by_kind[EventKind.LAND]) == (6, 0)
    assert ring.cons == ring.prod


def test_foreign_sized_records_are_skipped_and_never_mistaken_for_events() -> None:
    ring = FakeRing(RING, start=RING - 200)
    consumer, batches = ring.consumer()
    looks_like_ours = our_event(999, EventKind.LAND)[:60]  # same 72-byte footprint, length 60
    plan: list[tuple[int, bytes, bool]] = [
        (OURS, our_event(1), False),
        (60, looks_like_ours, False),
        (OURS, our_event(2), False),
        (100, foreign_payload(100), False),  # wraps the end of the ring
        (0, b"", False),
        (OURS, our_event(3), False),
        (24, foreign_payload(24), True),  # foreign and discarded
        (OURS + 8, our_event(998) + foreign_payload(8), False),  # ours plus a tail: not ours
        (OURS, our_event(4), False),
        (0, b"", False),  # last, shorter than one of our records
    ]
    for length, payload, discard in plan:
        assert ring.emit(length, payload, discard) is not None
    assert consumer.drain() == 4
    assert seqs(batches) == [1, 2, 3, 4]
    assert FOREIGN_MARK not in seqs(batches)
    stats = consumer.stats()
    assert (stats.consumed, stats.skipped) == (4, 6)
    assert stats.by_kind[EventKind.LAND] == 0
    assert ring.cons == ring.prod


@pytest.mark.parametrize("seed", range(4))
def test_every_record_offered_is_consumed_dropped_or_skipped_exactly(seed: int) -> None:
    """Random traffic: ours, discarded, foreign sizes, late commits, a ring that fills up."""
    rng = random.Random(seed)
    ring = FakeRing(RING, start=rng.randrange(0, 1 << 40) & ~7)
    consumer, batches = ring.consumer()
    offered = dropped = discarded = foreign = 0
    kept: list[tuple[int, int]] = []  # (position, seq) of our committed, kept records
    busy: dict[int, tuple[int, bool, int | None]] = {}  # pos -> (length, discard, seq)
    seq: int | None
    for step in range(3000):
        roll = rng.random()
        if roll < 0.15:
            consumer.drain()
            # Never past the oldest busy record; up to it when everything before is done.
            assert ring.cons == min(busy, default=ring.prod)
            continue
        if roll < 0.25 and busy:
            pos = rng.choice(sorted(busy))
            length, discard, seq = busy.pop(pos)
            ring.commit(pos, length, discard)
            if seq is not None and not discard:
                kept.append((pos, seq))
            continue
        late = rng.random() < 0.05
        if roll < 0.80:
            seq = step
            length, payload = OURS, our_event(step, EventKind(rng.randint(1, 10)))
            discard = rng.random() < 0.05
            offered += 1
        else:
            length = rng.choice([0, 8, 16, 60, 100, 300, OURS + 8])
            payload, seq, discard = foreign_payload(length), None, rng.random() < 0.3
        reserved = ring.reserve(length, payload)
        if reserved is None:
            dropped += seq is not None
            continue
        foreign += seq is None
        discarded += seq is not None and discard
        if late:
            busy[reserved] = (length, discard, seq)
            continue
        ring.commit(reserved, length, discard)
        if seq is not None and not discard:
            kept.append((reserved, seq))
    for pos, (length, discard, seq) in busy.items():
        ring.commit(pos, length, discard)
        if seq is not None and not discard:
            kept.append((pos, seq))
    while consumer.drain():
        pass
    stats = consumer.stats()
    assert ring.cons == ring.prod
    assert seqs(batches) == [s for _, s in sorted(kept)]  # ring order, each exactly once
    assert offered == stats.consumed + dropped + discarded
    assert stats.skipped == discarded + foreign
    assert sum(stats.by_kind.values()) == stats.consumed
    assert dropped > 0 and discarded > 0 and foreign > 0  # every path was taken

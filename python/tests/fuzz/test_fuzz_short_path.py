"""The short path against the full parser, on generated frames through the real programs.

With no feature after the counters, a plain frame (untagged IPv4 without options or IPv6
without extension headers, TCP or UDP, nothing to report) is counted by counted_plain() in
bpf/plain.h without the full parse; the default load always parses in full. The same
frames through both loads, on every hook, must give the same return codes, the same counts
and the same events field for field (the time aside): the short path may only skip work
whose outcome it knows.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sennet.agent.config import DEFAULT_ASSETS
from sennet.agent.counters import CounterReader
from sennet.agent.datapath import layout, libbpf_loader
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.loader_types import DatapathOptions, LoadedDatapath
from sennet.agent.events import RingBufferConsumer, decode
from sennet.agent.snapshot import Event
from sennet.testing.netlab import bpffs
from tests.fuzz.conftest import RING
from tests.fuzz.test_fuzz_frames import FUZZ, frames, refused_by_test_run

pytestmark = pytest.mark.kernel


def _l4(draw: st.DrawFn, proto: int) -> bytes:
    """A TCP header with any flags and offset, or a UDP header, then any payload."""
    l4 = draw(st.binary(max_size=60))
    if proto == 6:
        offset, flags = draw(st.integers(0, 15)), draw(st.integers(0, 0xFF))
        return struct.pack("!HHIIBBHHH", 1234, 80, 7, 0, offset << 4, flags, 512, 0, 0) + l4
    if proto == 17:
        return struct.pack("!HHHH", 4000, draw(st.sampled_from([53, 4001])), 8 + len(l4), 0) + l4
    return l4


@st.composite
def near_plain(draw: st.DrawFn) -> bytes:
    """Plain frames and frames one field away from plain, which frames() seldom makes (it
    draws every IPv4 field at random): the short path's every check is reached both ways."""
    proto = draw(st.sampled_from([6, 6, 17, 17, 1, 47]))
    l4 = _l4(draw, proto)
    ihl = draw(st.sampled_from([5, 5, 5, 4, 6]))
    total = draw(st.none() | st.sampled_from([19, 20, 27, 28, 39, 40]) | st.integers(0, 140))
    length = 4 * ihl + len(l4) if total is None else total
    src = bytes([10, 0, 0, 1])
    dst = draw(st.sampled_from([bytes([10, 0, 0, 2]), src]))  # equal: a LAND attack
    frag = draw(st.sampled_from([0, 0, 0x4000, 0x2000, 0x0001, 0x4005]))
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, 1, frag, 64, proto, 0, src, dst)
    frame = bytes.fromhex("0200000000aa0200000000bb")
    if draw(st.integers(0, 4)) == 0:
        frame += struct.pack("!HH", 0x8100, 7)
    frame += b"\x08\x00" + ip + b"\0" * max(0, 4 * ihl - 20) + l4
    frame += b"\0" * draw(st.sampled_from([0, 0, 10, 1100]))  # padding; 1100: a large frame
    if draw(st.integers(0, 3)) == 0:
        frame = frame[: draw(st.integers(14, len(frame)))]
    return frame


@st.composite
def near_plain6(draw: st.DrawFn) -> bytes:
    """near_plain() for IPv6: no extension header or one, any payload length (0 included),
    equal addresses (LAND), frames around the 74 bytes the short path reads, cut anywhere."""
    nh = draw(st.sampled_from([6, 6, 17, 17, 58, 0, 44]))
    l4 = _l4(draw, nh)
    plen = draw(st.none() | st.sampled_from([0, 7, 8, 19, 20]) | st.integers(0, 140))
    src = bytes(15) + b"\x01"
    dst = draw(st.sampled_from([bytes(15) + b"\x02", bytes([1]) + bytes(14) + b"\x01", src]))
    length = len(l4) if plen is None else plen
    ip = struct.pack("!IHBB16s16s", 6 << 28, length, nh, 64, src, dst)
    frame = bytes.fromhex("0200000000aa0200000000bb")
    if draw(st.integers(0, 4)) == 0:
        frame += struct.pack("!HH", 0x8100, 7)
    frame += b"\x86\xdd" + ip + l4
    frame += b"\0" * draw(st.sampled_from([0, 0, 2, 12, 1100]))  # padding; 1100: large
    if draw(st.integers(0, 3)) == 0:
        frame = frame[: draw(st.integers(14, len(frame)))]
    return frame


@pytest.fixture(scope="module")
def counters_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedDatapath]:
    """A second load of the object with every feature after the counters off."""
    with bpffs(tmp_path_factory.mktemp("pins")) as pins:
        pin_dir = pins / "counters"
        pin_dir.mkdir()
        opts = DatapathOptions(DEFAULT_ASSETS, pin_dir, RING, 1000, features=layout.Feature(0))
        loaded = libbpf_loader.load(opts)
        try:
            yield loaded
        finally:
            loaded.close()


class Side:
    """One load: its programs by hook, its counters and the events it raised."""

    def __init__(self, dp: LoadedDatapath) -> None:
        self.fds = (dp.ingress_fd, dp.egress_fd, dp.xdp_fd)
        self.reader = CounterReader(dp.map_fds)
        self.batches: list[bytes] = []
        self.consumer = RingBufferConsumer(
            dp.map_fds[layout.MAP_EVENTS], RING, on_batch=self.batches.append
        )

    def totals(self) -> dict[layout.Direction, tuple[int, int]]:
        """BPF_PROG_TEST_RUN runs on the loopback device, which no agent registered."""
        t = self.reader.slot_totals(layout.UNMAPPED_SLOT)
        return {d: (c.packets, c.bytes) for d, c in t.items()}

    def events(self) -> list[Event]:
        self.consumer.drain()
        out = [dataclasses.replace(e, ts_ns=0) for b in self.batches for e in decode(b)]
        self.batches.clear()
        return out


def test_a_plain_frame_counts_and_reports_the_same_on_the_short_path(
    datapath: LoadedDatapath, counters_only: LoadedDatapath
) -> None:
    full, short = Side(datapath), Side(counters_only)
    lib = libbpf()

    @FUZZ
    @given(frame=st.one_of(frames(), near_plain(), near_plain6()))
    def one(frame: bytes) -> None:
        hooks = range(2, 3) if refused_by_test_run(frame) else range(3)  # XDP takes any frame
        for hook in hooks:
            runs = [lib.test_run(side.fds[hook], frame, 1) for side in (full, short)]
            assert runs[0][0] == runs[1][0] and runs[0][2] == runs[1][2] == frame
        assert short.totals() == full.totals()
        assert short.events() == full.events()

    try:
        one()
    finally:
        full.consumer.close()
        short.consumer.close()

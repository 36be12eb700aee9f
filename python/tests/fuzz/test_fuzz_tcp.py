"""Hostile TCP segments through the real TC programs with BPF_PROG_TEST_RUN.

Random TCP headers (every flag combination, data offsets from 0 to 15 words,
zero and random windows, random sequence numbers), options and payload of any
length, frames cut anywhere and followed by Ethernet padding. Each must pass
unchanged with TC_ACT_UNSPEC, and the TCP health counters must move exactly as
the frame's own fields say: a header that does not fit is not read at all, a
data offset below 5 words or past the IP packet is malformed, a RST is one
reset on the hook it crossed, a zero window (not RST) is one advertisement, and
a SYN is one retried SYN when the same SYN crosses the second hook. The
retransmission total is not modelled here: with the flow table it depends on
the sequence state earlier examples left behind.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.loader_types import LoadedDatapath
from sennet.agent.events import RingBufferConsumer
from sennet.agent.tcp_health import TcpHealthReader
from tests.fuzz.conftest import RING
from tests.fuzz.test_fuzz_frames import FUZZ, TC_ACT_UNSPEC

pytestmark = pytest.mark.kernel

C = layout.TcpCounter
ETH = 14
SYN, RST, ACK = 0x02, 0x04, 0x10


@dataclass(frozen=True)
class Segment:
    frame: bytes
    l4_off: int  # frame offset of the TCP header
    limit: int  # where the IP packet ends, held to the frame


@st.composite
def segments(draw: st.DrawFn) -> Segment:
    flags = draw(st.integers(0, 0xFF))
    offset = draw(st.integers(0, 15))
    window = draw(st.sampled_from([0, 0, 1, 0xFFFF]) | st.integers(0, 0xFFFF))
    seq, ack = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
    sport, dport = draw(st.integers(1, 0xFFFF)), draw(st.integers(1, 0xFFFF))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, window, 0, 0)
    tcp += draw(st.binary(max_size=80))  # options and payload, as long as they like
    if draw(st.booleans()):
        src, dst = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
        l3 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst)
        ethertype, l3_len = 0x0800, 20
    else:
        src = bytes.fromhex("20010db8000000000000000000000001")
        dst = bytes.fromhex("20010db8000000000000000000000002")
        l3 = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst)
        ethertype, l3_len = 0x86DD, 40
    packet = bytes.fromhex("0200000000aa0200000000bb") + struct.pack("!H", ethertype) + l3 + tcp
    # BPF_PROG_TEST_RUN refuses frames shorter than the L3 header; cut anywhere past it.
    cut = draw(st.integers(ETH + l3_len, len(packet)))
    frame = packet[:cut] + b"\0" * draw(st.integers(0, 24))  # padding is never a header
    # The IP length fields are true to the uncut packet; a frame shorter than they say
    # ends the packet where the frame ends (padding included: nothing tells them apart).
    return Segment(frame, ETH + l3_len, min(len(packet), len(frame)))


def expected(s: Segment) -> tuple[dict[layout.TcpCounter, int], bool]:
    """What one crossing of one hook adds, read from the frame's own bytes where the TCP
    header lies (after a cut, that may be padding); and whether the segment reaches the
    handshake logic (a well-formed header, no RST)."""
    if s.l4_off + 20 > s.limit:
        return {}, False  # the fixed header does not fit: not TCP health's to judge
    words, flags, window = struct.unpack_from("!BBH", s.frame, s.l4_off + 12)
    hdr_end = s.l4_off + 4 * (words >> 4)
    if words >> 4 < 5 or hdr_end > s.limit:
        return {C.MALFORMED: 1}, False
    if flags & RST:
        return {C.RST_RX: 1}, False  # the caller moves it to the hook
    return ({C.ZERO_WINDOW: 1} if window == 0 else {}), True


def test_hostile_tcp_headers_move_the_counters_exactly_as_their_fields_say(
    datapath: LoadedDatapath,
) -> None:
    reader = TcpHealthReader(datapath.map_fds, handshake_timeout_s=10.0)
    consumer = RingBufferConsumer(datapath.map_fds[layout.MAP_EVENTS], RING)
    lib = libbpf()
    hs_fd = datapath.map_fds[layout.MAP_HANDSHAKES]

    @FUZZ
    @given(s=segments())
    def one(s: Segment) -> None:
        for key in list(lib.keys(hs_fd, layout.HS_KEY.itemsize)):
            lib.delete(hs_fd, key)  # each example starts with no pending handshake
        want, handshake = expected(s)
        syn_alone = handshake and s.frame[s.l4_off + 13] & (SYN | ACK | RST) == SYN
        hooks = ((C.RST_RX, datapath.ingress_fd), (C.RST_TX, datapath.egress_fd))
        for i, (rst_slot, fd) in enumerate(hooks):
            before = reader.counters()
            retval, _ns, out = lib.test_run(fd, s.frame, 1)
            assert retval == TC_ACT_UNSPEC, f"return code {retval:#x}"
            assert out == s.frame, "the program changed the packet"
            moved = {k: v - before[k] for k, v in reader.counters().items() if v != before[k]}
            moved.pop(C.RETRANS, None)  # see the module docstring
            here = {rst_slot if k == C.RST_RX else k: v for k, v in want.items()}
            if i == 1 and syn_alone:
                here[C.SYN_RETRIED] = 1  # the same SYN, seen again on the second hook
            assert moved == here, s
        consumer.drain()

    try:
        one()
    finally:
        consumer.close()

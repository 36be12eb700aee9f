"""Generated frames through the real TC programs with BPF_PROG_TEST_RUN.

Every frame, however malformed, must pass the verifier-approved code without a
runtime error, come back unchanged with TC_ACT_UNSPEC (the programs never drop
or alter traffic), and be counted exactly once, with its length, on both hooks.
The frames are built field by field (Ethernet, up to two VLAN tags, IPv4 or
IPv6 with lying length fields, TCP/UDP/ICMP cut anywhere) plus raw noise, so
the parser's every bounds check is reached. On a failure hypothesis prints the
smallest failing frame and a `@reproduce_failure` blob to replay it.
"""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sennet.agent.counters import CounterReader
from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import BpfError, libbpf
from sennet.agent.datapath.loader_types import LoadedDatapath
from sennet.agent.events import RingBufferConsumer
from tests.fuzz.conftest import RING

pytestmark = pytest.mark.kernel

TC_ACT_UNSPEC = 0xFFFFFFFF  # -1 as the u32 BPF_PROG_TEST_RUN reports
FUZZ = settings(
    max_examples=1500,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _ipv4(proto: int, payload: bytes, ihl: int, total: int | None, frag: int) -> bytes:
    length = 4 * ihl + len(payload) if total is None else total
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, length & 0xFFFF, 1, frag, 64, proto, 0,
        bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]),
    )  # fmt: skip
    return header + b"\0" * max(0, 4 * ihl - 20) + payload


def _ipv6(proto: int, payload: bytes, plen: int | None) -> bytes:
    length = len(payload) if plen is None else plen
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8000000000000000000000002")
    return struct.pack("!IHBB16s16s", 6 << 28, length & 0xFFFF, proto, 64, src, dst) + payload


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Ethernet frames from well formed to hostile, cut at any length of at least 14 bytes."""
    if draw(st.integers(0, 9)) == 0:  # one in ten: noise after a plausible MAC header
        return draw(st.binary(min_size=14, max_size=1600))
    tags = draw(st.integers(0, 2))
    proto = draw(st.sampled_from([6, 17, 1, 58, 47, 0]))
    l4 = draw(st.binary(min_size=0, max_size=120))
    if proto == 6 and draw(st.booleans()):  # a TCP header with chosen flags and offset
        flags = draw(st.integers(0, 0xFF))
        offset = draw(st.integers(0, 15))
        l4 = struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, offset << 4, flags, 512, 0, 0) + l4
    if draw(st.booleans()):
        total = draw(st.none() | st.integers(0, 0xFFFF))
        l3 = _ipv4(proto, l4, draw(st.integers(0, 15)), total, draw(st.integers(0, 0xFFFF)))
        ethertype = 0x0800
    else:
        l3 = _ipv6(proto, l4, draw(st.none() | st.integers(0, 0xFFFF)))
        ethertype = 0x86DD
    frame = bytes.fromhex("0200000000aa0200000000bb")
    for _ in range(tags):
        frame += struct.pack(
            "!HH", draw(st.sampled_from([0x8100, 0x88A8])), draw(st.integers()) & 0xFFFF
        )
    frame += struct.pack("!H", ethertype) + l3
    frame += b"\0" * draw(st.integers(0, 40))  # Ethernet padding, which is never a header
    cut = draw(st.integers(14, len(frame)))
    return frame[:cut]


def refused_by_test_run(frame: bytes) -> bool:
    """BPF_PROG_TEST_RUN itself (not our program) refuses an untagged IPv4 or IPv6 frame
    shorter than its full L3 header with EINVAL, before any program runs. Such frames reach
    TC on a real link; tests/frames.py sends them through a veth pair instead."""
    ethertype = frame[12:14]
    return (ethertype == b"\x08\x00" and len(frame) < 34) or (
        ethertype == b"\x86\xdd" and len(frame) < 54
    )


def _unmapped(reader: CounterReader) -> dict[layout.Direction, tuple[int, int]]:
    """BPF_PROG_TEST_RUN runs on the loopback device, which no agent registered."""
    totals = reader.slot_totals(layout.UNMAPPED_SLOT)
    return {d: (t.packets, t.bytes) for d, t in totals.items()}


def test_every_generated_frame_passes_unchanged_and_is_counted_once(
    datapath: LoadedDatapath,
) -> None:
    reader = CounterReader(datapath.map_fds)
    consumer = RingBufferConsumer(datapath.map_fds[layout.MAP_EVENTS], RING)
    lib = libbpf()

    @FUZZ
    @given(frame=frames())
    def one(frame: bytes) -> None:
        for direction, fd in (
            (layout.Direction.RX, datapath.ingress_fd),
            (layout.Direction.TX, datapath.egress_fd),
        ):
            before = _unmapped(reader)[direction]
            if refused_by_test_run(frame):
                with pytest.raises(BpfError) as refused:
                    lib.test_run(fd, frame, 1)
                assert refused.value.errno == errno.EINVAL
                assert _unmapped(reader)[direction] == before  # no program ran
                continue
            retval, _ns, out = lib.test_run(fd, frame, 1)
            after = _unmapped(reader)[direction]
            assert retval == TC_ACT_UNSPEC, f"return code {retval:#x}"
            assert out == frame, "the program changed the packet"
            assert after == (before[0] + 1, before[1] + len(frame)), (before, after)
        consumer.drain()  # keep the ring from filling over thousands of examples

    try:
        one()
    finally:
        consumer.close()

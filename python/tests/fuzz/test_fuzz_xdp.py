"""Generated frames through the real XDP program with BPF_PROG_TEST_RUN.

The XDP program shares handle() with TC ingress, so the same hostile frames
(tests/fuzz/test_fuzz_frames.py builds them) must pass there too: XDP_PASS for
every frame, the frame unchanged, counted exactly once with its length, and the
events detected per kind the same as TC ingress detects for that frame (where
BPF_PROG_TEST_RUN runs a TC program at all: it refuses some short frames before
any program runs, and XDP has no such refusal).
"""

from __future__ import annotations

import pytest
from hypothesis import given

from sennet.agent.counters import CounterReader
from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.loader_types import LoadedDatapath
from sennet.agent.events import RingBufferConsumer
from tests.fuzz.conftest import RING
from tests.fuzz.test_fuzz_frames import FUZZ, TC_ACT_UNSPEC, frames, refused_by_test_run

pytestmark = pytest.mark.kernel

XDP_PASS = 2


def _rx(reader: CounterReader) -> tuple[int, int]:
    """BPF_PROG_TEST_RUN runs on the loopback device, which no agent registered."""
    t = reader.slot_totals(layout.UNMAPPED_SLOT)[layout.Direction.RX]
    return t.packets, t.bytes


def _detected(reader: CounterReader) -> dict[str, int]:
    return {k.label: v for k, v in reader.by_kind(layout.MAP_EV_COUNTS).items()}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def test_every_generated_frame_passes_xdp_unchanged_counted_once_with_tc_s_events(
    datapath: LoadedDatapath,
) -> None:
    reader = CounterReader(datapath.map_fds)
    consumer = RingBufferConsumer(datapath.map_fds[layout.MAP_EVENTS], RING)
    lib = libbpf()

    @FUZZ
    @given(frame=frames())
    def one(frame: bytes) -> None:
        before, seen = _rx(reader), _detected(reader)
        retval, _ns, out = lib.test_run(datapath.xdp_fd, frame, 1)
        assert retval == XDP_PASS, f"return code {retval}"
        assert out == frame, "the program changed the frame"
        assert _rx(reader) == (before[0] + 1, before[1] + len(frame))
        at_xdp = _delta(_detected(reader), seen)
        if not refused_by_test_run(frame):
            seen = _detected(reader)
            retval, _ns, _out = lib.test_run(datapath.ingress_fd, frame, 1)
            assert retval == TC_ACT_UNSPEC
            assert _delta(_detected(reader), seen) == at_xdp
        consumer.drain()  # keep the ring from filling over thousands of examples

    try:
        one()
    finally:
        consumer.close()

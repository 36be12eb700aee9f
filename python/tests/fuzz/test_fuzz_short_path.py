"""The short path against the full parser, on generated frames through the real programs.

With no feature after the counters, a plain frame (untagged IPv4 without options, TCP or
UDP, nothing to report) is counted by counted_plain() in bpf/sennet_tc.bpf.c without the
full parse; the default load always parses in full. The same frames through both loads,
on every hook, must give the same return codes, the same counts and the same events field
for field (the time aside): the short path may only skip work whose outcome it knows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from hypothesis import given

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
    @given(frame=frames())
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

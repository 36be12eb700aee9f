"""Load, attach and read the real data plane from inside a test (no agent process)."""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sennet.agent.config import DEFAULT_ASSETS
from sennet.agent.counters import CounterReader
from sennet.agent.datapath import layout
from sennet.agent.datapath.layout import FLOW_CAPACITY_DEFAULT
from sennet.agent.datapath.loader_types import DatapathOptions
from sennet.agent.datapath.manager import DatapathManager
from sennet.agent.events import RingBufferConsumer, decode
from sennet.agent.snapshot import Event
from sennet.testing.netlab import VethPair

LOADERS = ("libbpf", "bcc")
# The default load and the one with every feature after the counters off: the latter counts
# a plain frame on a path of its own (bpf/plain.h: counted_plain), so the exact-count
# tests run against both.
FEATURE_SETS = {"all": layout.FEATURES_ALL, "counters": layout.Feature(0)}


@dataclass
class Running:
    manager: DatapathManager
    reader: CounterReader
    consumer: RingBufferConsumer
    slot: int
    batches: list[bytes]
    rx_hook: str = "tc"

    def totals(self) -> dict[str, tuple[int, int]]:
        t = self.reader.slot_totals(self.slot)
        return {d.label: (t[d].packets, t[d].bytes) for d in layout.Direction}

    def events(self) -> list[Event]:
        self.consumer.drain()
        if not self.batches:
            return []
        return decode(b"".join(self.batches))

    def kinds(self) -> Counter[str]:
        return Counter(e.kind.label for e in self.events())

    def detected(self) -> dict[str, int]:
        return {k.label: v for k, v in self.reader.by_kind(layout.MAP_EV_COUNTS).items() if v}

    def drops(self) -> dict[str, int]:
        return {k.label: v for k, v in self.reader.by_kind(layout.MAP_RB_DROPS).items() if v}


@contextlib.contextmanager
def running(
    net: VethPair,
    pin_dir: Path,
    loader: str = "libbpf",
    ringbuf_bytes: int = 1 << 20,
    large: int = 1000,
    detach: bool = True,
    flow_capacity: int = FLOW_CAPACITY_DEFAULT,
    attach_rx: str = "tc",
    xdp_mode: str = "auto",
    features: layout.Feature = layout.FEATURES_ALL,
) -> Iterator[Running]:
    state = Path(tempfile.mkdtemp(prefix="sennet-state-"))
    manager = DatapathManager(
        options=DatapathOptions(
            DEFAULT_ASSETS,
            pin_dir,
            ringbuf_bytes,
            large,
            flow_capacity=flow_capacity,
            features=features,
            xdp=attach_rx == "xdp",  # as the agent loads it
        ),
        loader=loader,
        tc_priority=1,
        state_dir=state,
        netns=net.ns_a,  # the TC/XDP calls run in the monitored namespace
        attach_rx=attach_rx,
        xdp_mode=xdp_mode,
    )
    consumer = None
    try:
        loaded = manager.load()
        attached = manager.attach((net.if_a,))
        batches: list[bytes] = []
        consumer = RingBufferConsumer(
            loaded.map_fds[layout.MAP_EVENTS], ringbuf_bytes, 0, on_batch=batches.append
        )
        reader = CounterReader(loaded.map_fds)
        yield Running(manager, reader, consumer, attached[0].slot, batches, attached[0].rx_hook)
    finally:
        if detach and manager.loaded is not None:
            manager.detach()
        if consumer is not None:
            consumer.close()
        manager.close()

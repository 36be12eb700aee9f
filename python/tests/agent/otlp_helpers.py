"""Snapshots and sinks for the OTLP tests: the figures a test feeds in are its own oracle."""

from __future__ import annotations

import platform
import random
import time
from dataclasses import replace

from sennet.agent.datapath.layout import Direction, EventKind
from sennet.agent.sinks.otlp.settings import OtlpOptions, parse_endpoint
from sennet.agent.sinks.otlp.sink import OtlpSink
from sennet.agent.snapshot import Event, InterfaceCounters, Snapshot

RX = {"network.interface.name": "veth-m", "network.io.direction": "receive"}


def snap(rx: int, *, events: int = 0, uptime: float = 1.0, dropped: int = 0) -> Snapshot:
    evs = tuple(
        Event(time.monotonic_ns(), 7, Direction.RX, EventKind.LARGE_PACKET, 1500 + n, 4, 17,
              1000 + n, 53, 0x0800, 0, 0, "10.1.0.1", "10.1.0.2")
        for n in range(events)
    )  # fmt: skip
    return Snapshot(
        agent_version="0.1.0",
        kernel_version=platform.release(),
        uptime_s=uptime,
        loader="libbpf",
        interfaces=(InterfaceCounters("veth-m", 7, rx, rx * 100, 0, 0),),
        events_by_kind={"large_packet": rx},
        ringbuf_drops_by_kind={"large_packet": 0},
        events_consumed=rx,
        recent_events=evs,
        recent_events_dropped=dropped,
    )


def options(*endpoints: str, **kw: object) -> OtlpOptions:
    fast = OtlpOptions(
        tuple(parse_endpoint(e) for e in endpoints),
        timeout_s=2.0,
        backoff_initial_s=0.05,
        backoff_max_s=0.4,
        close_flush_s=2.0,
    )
    return replace(fast, **kw)  # type: ignore[arg-type]


def sink_for(opts: OtlpOptions, agent_id: str = "agent-1") -> OtlpSink:
    return OtlpSink(opts, agent_id, rng=random.Random(7), capture_logs=False)

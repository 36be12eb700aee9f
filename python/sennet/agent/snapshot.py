"""What the agent knows at one instant: the data a heartbeat carries.

Counters are cumulative since the maps were created (they survive agent
restarts through pinned maps), so a lost heartbeat loses nothing: the next one
carries the totals. Events ride along as a bounded batch of the newest ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sennet.agent.datapath.layout import Direction, EventKind
from sennet.agent.image_state import NO_IMAGE, ImageState
from sennet.agent.telemetry import DnsReport, FlowReport, Microburst, TcpReport


@dataclass(frozen=True)
class InterfaceCounters:
    ifname: str
    ifindex: int
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int


@dataclass(frozen=True)
class Event:
    """One decoded ring-buffer record (see bpf/sennet_tc.h)."""

    ts_ns: int  # CLOCK_MONOTONIC nanoseconds, kernel time of detection
    ifindex: int
    direction: Direction
    kind: EventKind
    pkt_len: int  # frame on the wire, Ethernet header on, no FCS (aggregate: largest segment)
    ip_version: int
    l4_proto: int
    sport: int
    dport: int
    eth_proto: int
    tcp_flags: int
    vlan_tags: int
    saddr: str | None  # text form, None when not IP
    daddr: str | None


@dataclass(frozen=True)
class Snapshot:
    """Cumulative state plus the events decoded since the previous snapshot."""

    agent_version: str
    kernel_version: str
    uptime_s: float
    loader: str
    interfaces: tuple[InterfaceCounters, ...]
    events_by_kind: dict[str, int]  # detected by the kernel, cumulative (pinned)
    ringbuf_drops_by_kind: dict[str, int]  # lost because the ring was full, cumulative
    events_consumed: int  # decoded by this agent process since it started
    recent_events: tuple[Event, ...] = field(default=())
    recent_events_dropped: int = 0  # decoded but not kept: the batch bound was hit
    # Read once per interval (a scrape between intervals sees the latest read):
    flows: FlowReport | None = None
    microbursts: tuple[Microburst, ...] = ()
    dns: DnsReport | None = None
    tcp: TcpReport | None = None
    # The appliance image and the last update outcome (unset on an ordinary host).
    image_state: ImageState = NO_IMAGE

"""Traffic and read-out helpers shared by the flow and microburst tests."""

from __future__ import annotations

from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from sennet.agent.datapath import layout
from sennet.agent.flows import FlowTracker
from sennet.testing.linkstats import LinkStats, link_stats, settled
from sennet.testing.netlab import VethPair
from tests.datapath_harness import Running
from tests.frames import MAC_A, MAC_B


def frame(l3: Packet, vlan: int, payload: int) -> bytes:
    """An Ethernet frame towards the monitored side, VLAN-tagged when `vlan` is set."""
    head = Ether(src=MAC_B, dst=MAC_A)
    if vlan:
        head = head / Dot1Q(vlan=vlan)
    return bytes(head / l3 / Raw(b"f" * payload))


def tracker(dp: Running, top_n: int = 10, idle_s: float = 3600.0) -> FlowTracker:
    """The agent's flow reader on the running data plane; its first walk starts the count."""
    fds = dp.manager.loaded.map_fds  # type: ignore[union-attr]
    return FlowTracker(fds[layout.MAP_FLOWS], fds[layout.MAP_FLOW_STATS], top_n, idle_s)


def send_settled(net: VethPair, frames: list[bytes]) -> LinkStats:
    """Send to the monitored side; what its interface counted once nothing more crosses."""
    before = link_stats(net.ns_a, net.if_a)
    net.send_to_a(frames)
    return settled(net.ns_a, net.if_a) - before


def names(dp: Running) -> dict[int, str]:
    return {a.ifindex: a.ifname for a in dp.manager.attached}

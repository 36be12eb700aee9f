"""Traffic into the monitored NIC: exact counter deltas at the control plane after a heartbeat."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from replay_pcap import replay
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap
from sennet.testing.controlplane import ControlPlane
from sennet.testing.vm.appliance import Appliance
from sennet.testing.vm.guest import (
    PY,
    TOOLS,
    agent_id,
    counters,
    event_totals,
    nic_counters,
    plus_rx,
    reported,
    wait_counters,
)
from sennet.testing.vm.traffic import GUEST_MON_MAC, HOST_MAC, mixed, tcp_train


@pytest.fixture(scope="module")
def agent(appliance: Appliance, control_plane: ControlPlane) -> str:
    ident = agent_id(appliance.machine)
    control_plane.wait_until("a heartbeat from the guest", lambda: reported(control_plane, ident))
    return ident


def rx_delta(after: dict[str, float], before: dict[str, float]) -> tuple[float, float]:
    return after["rx_packets"] - before["rx_packets"], after["rx_bytes"] - before["rx_bytes"]


def test_mixed_traffic_arrives_as_exact_rx_deltas(
    appliance: Appliance, control_plane: ControlPlane, agent: str
) -> None:
    before, nic_before = counters(control_plane, agent), nic_counters(appliance.machine)
    frames = mixed()  # VLAN-tagged frames among them: the tag counts, as virtio-net counts it
    appliance.tap.send(frames)
    wait_counters(control_plane, agent, plus_rx(before, frames))
    assert rx_delta(nic_counters(appliance.machine), nic_before) == rx_delta(
        counters(control_plane, agent), before
    )


# Runs in the guest: the largest skb its stack receives on eth1 (after GRO), by a packet
# socket, until the stream has been quiet for 2 s.
LARGEST_SKB = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth1", 0))
open("/tmp/largest.ready", "w").close()
s.settimeout(60)
largest = 0
try:
    while True:
        largest = max(largest, len(s.recv(1 << 17)))
        s.settimeout(2)
except socket.timeout:
    pass
open("/tmp/largest.out", "w").write(str(largest))
"""


@contextlib.contextmanager
def gro_holding(appliance: Appliance) -> Iterator[None]:
    """Let the guest's GRO hold segments across NAPI polls (20 ms), so a burst that TCG
    delivers one interrupt at a time still merges; the previous settings come back after."""
    sysfs = "/sys/class/net/eth1/"
    keys = ("gro_flush_timeout", "napi_defer_hard_irqs")
    old = appliance.machine.succeed(" ".join(["cat", *(sysfs + k for k in keys)])).split()
    appliance.machine.succeed(
        f"echo 20000000 > {sysfs}gro_flush_timeout && echo 1000 > {sysfs}napi_defer_hard_irqs"
    )
    try:
        yield
    finally:
        for k, v in zip(keys, old, strict=True):
            appliance.machine.succeed(f"echo {v} > {sysfs}{k}")


def test_a_tcp_stream_counts_as_the_segments_virtio_received(
    appliance: Appliance, control_plane: ControlPlane, agent: str
) -> None:
    """The guest's GRO merges the stream before TC ingress; virtio-net counted each segment
    it received, and so must the agent, with no segment taken for a large packet."""
    frames = tcp_train()
    m = appliance.machine
    with gro_holding(appliance):
        m.succeed("rm -f /tmp/largest.ready /tmp/largest.out")
        m.succeed(f"{PY} -c {shlex.quote(LARGEST_SKB)} </dev/null >/tmp/largest.log 2>&1 &")
        m.wait_until_succeeds("test -e /tmp/largest.ready || (cat /tmp/largest.log; false)")
        before, nic_before = counters(control_plane, agent), nic_counters(m)
        events_before = event_totals(control_plane, agent)
        appliance.tap.send(frames)
        wait_counters(control_plane, agent, plus_rx(before, frames))
        assert rx_delta(nic_counters(m), nic_before) == rx_delta(
            counters(control_plane, agent), before
        )
        assert event_totals(control_plane, agent) == events_before  # no segment is large
        largest = int(m.wait_until_succeeds("cat /tmp/largest.out", timeout=30))
    assert largest > max(map(len, frames)), "GRO merged segments before TC ingress"


def test_replayed_pcap_arrives_as_exact_rx_deltas(
    appliance: Appliance, control_plane: ControlPlane, agent: str, tmp_path: Path
) -> None:
    pcap = tmp_path / "mixed.pcap"
    wrpcap(str(pcap), [Ether(f) for f in mixed()[::-1]])
    before = counters(control_plane, agent)
    sent, sent_bytes = replay(pcap, appliance.tap)
    assert sent == len(mixed())
    expected = dict(
        before,
        rx_packets=before["rx_packets"] + sent,
        rx_bytes=before["rx_bytes"] + sent_bytes,
    )
    wait_counters(control_plane, agent, expected)


def test_mirrored_frames_for_other_hosts_are_counted(
    appliance: Appliance, control_plane: ControlPlane, agent: str
) -> None:
    """A mirror port carries other hosts' traffic: the monitored NIC must be promiscuous."""
    foreign = [f[:0] + bytes.fromhex("0200c0ffee01") + f[6:] for f in mixed()]
    before = counters(control_plane, agent)
    appliance.tap.send(foreign)
    wait_counters(control_plane, agent, plus_rx(before, foreign))


@contextlib.contextmanager
def addressed_monitor_port(appliance: Appliance) -> Iterator[None]:
    """Give eth1 an address and a static neighbour (no ARP), so the guest answers pings."""
    appliance.machine.succeed(
        f"{TOOLS}/ip addr add 192.0.2.1/24 dev eth1 && "
        f"{TOOLS}/ip neigh add 192.0.2.2 lladdr {HOST_MAC} dev eth1 nud permanent"
    )
    try:
        yield
    finally:
        appliance.machine.succeed(f"{TOOLS}/ip addr flush dev eth1")


def test_echo_replies_are_counted_as_tx(
    appliance: Appliance, control_plane: ControlPlane, agent: str
) -> None:
    request = bytes(
        Ether(src=HOST_MAC, dst=GUEST_MON_MAC)
        / IP(src="192.0.2.2", dst="192.0.2.1")
        / ICMP(id=7, seq=1)
        / Raw(b"e" * 56)
    )
    with addressed_monitor_port(appliance):
        before = counters(control_plane, agent)
        appliance.tap.send([request] * 4)
        expected = dict(before)
        expected["rx_packets"] += 4
        expected["rx_bytes"] += 4 * len(request)
        expected["tx_packets"] += 4  # one echo reply each, same size as the request
        expected["tx_bytes"] += 4 * len(request)
        wait_counters(control_plane, agent, expected)

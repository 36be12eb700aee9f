"""Frames that reach TC ingress as non-linear skbs are counted exactly, both loaders.

trafgen (Debian netsniff-ng) writes frames into a PACKET_MMAP TX ring, and the
kernel's tpacket_snd attaches their bytes as page fragments after a linear head
of the Ethernet header: the programs cannot read the IP and L4 headers in place
and copy them (one bpf_skb_load_bytes for an option-less IPv4 header and its
TCP/UDP header). The tests' own packet-socket sends are linear, so this is the
only test of that path on a real receive. The interface's own counters and the
flows' known packet counts are the oracle.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP

from sennet.agent.datapath import layout
from sennet.testing.linkstats import link_stats, settled
from sennet.testing.netlab import VethPair
from tests.datapath_harness import LOADERS, running
from tests.flow_traffic import frame, tracker

pytestmark = pytest.mark.kernel

COUNT = 500  # frames of each kind


def trafgen_send(net: VethPair, frames: list[bytes], work: Path) -> None:
    """COUNT copies of every frame through trafgen's TX ring, from b towards a."""
    conf = work / "frames.trafgen"
    conf.write_text("".join("{ " + ", ".join(f"0x{b:02x}" for b in f) + " }\n" for f in frames))
    argv = ["ip", "netns", "exec", net.ns_b, "trafgen", "--dev", net.if_b, "--conf", str(conf)]
    argv += ["--num", str(COUNT * len(frames)), "--cpus", "1", "--no-cpu-stats", "--notouch-irq"]
    subprocess.run(
        argv,
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def ring_frames() -> list[bytes]:
    """A UDP and a TCP frame, one too short for the single copy, one with IP options."""
    udp = frame(IP(src="10.60.0.1", dst="10.60.0.2") / UDP(sport=7000, dport=7001), 0, 18)
    tcp = frame(IP(src="10.60.0.3", dst="10.60.0.2") / TCP(sport=7002, dport=80, flags="A"), 0, 6)
    short = frame(IP(src="10.60.0.4", dst="10.60.0.2") / UDP(sport=7003, dport=7001), 0, 0)
    # an IP header with options: its L4 header is not in the one copy, so it takes a second
    opts = frame(
        IP(src="10.60.0.5", dst="10.60.0.2", options=[IPOption_NOP()] * 4)
        / UDP(sport=7004, dport=7001),
        0,
        10,
    )
    assert (len(udp), len(tcp), len(short), len(opts)) == (60, 60, 42, 56)
    return [udp, tcp, short, opts]


@pytest.mark.parametrize("loader", LOADERS)
def test_frames_from_a_packet_mmap_ring_are_counted_exactly(
    net: VethPair, pin_root: Path, tmp_path: Path, loader: str
) -> None:
    with running(net, pin_root / loader, loader) as dp:
        flows = tracker(dp, top_n=10)
        before = link_stats(net.ns_a, net.if_a)
        trafgen_send(net, ring_frames(), tmp_path)
        kernel = settled(net.ns_a, net.if_a) - before
        assert (kernel.rx_packets, kernel.rx_bytes) == (4 * COUNT, COUNT * (60 + 60 + 42 + 56))
        assert dp.totals()["rx"] == (kernel.rx_packets, kernel.rx_bytes)
        assert dp.detected() == {} and dp.drops() == {}
        report = flows.read({a.ifindex: a.ifname for a in dp.manager.attached})
    talkers = report.top_talkers
    got = {(t.saddr, t.sport, t.dport, t.l4_proto): (t.packets, t.bytes) for t in talkers}
    assert got == {
        ("10.60.0.1", 7000, 7001, 17): (COUNT, COUNT * 60),
        ("10.60.0.3", 7002, 80, 6): (COUNT, COUNT * 60),
        ("10.60.0.4", 7003, 7001, 17): (COUNT, COUNT * 42),
        ("10.60.0.5", 7004, 7001, 17): (COUNT, COUNT * 56),
    }
    assert all(t.direction == layout.Direction.RX.label for t in report.top_talkers)


@pytest.mark.parametrize("loader", LOADERS)
def test_ring_frames_are_counted_exactly_with_every_feature_off(
    net: VethPair, pin_root: Path, tmp_path: Path, loader: str
) -> None:
    """With no feature after the counters a plain frame takes the program's short path, which
    copies the headers of a non-linear frame on its own; the rest take the full parser."""
    with running(net, pin_root / loader, loader, features=layout.Feature(0)) as dp:
        before = link_stats(net.ns_a, net.if_a)
        trafgen_send(net, ring_frames(), tmp_path)
        kernel = settled(net.ns_a, net.if_a) - before
        assert (kernel.rx_packets, kernel.rx_bytes) == (4 * COUNT, COUNT * (60 + 60 + 42 + 56))
        assert dp.totals() == {"rx": (kernel.rx_packets, kernel.rx_bytes), "tx": (0, 0)}
        assert dp.detected() == {} and dp.drops() == {}

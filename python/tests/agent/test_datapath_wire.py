"""Counts equal to the wire: the data plane's counters against the kernel's own counters of
the same interface (IFLA_STATS64, what `ip -s link` prints), which none of our code computes.

What veth itself counts (measured on the host kernel; see docs/datapath.md):
- a frame from a packet socket: its whole length on both ends, an outer VLAN tag included,
  although the receiving stack moves that tag into skb metadata before TC ingress;
- a TCP aggregate from a sender with TSO off and GSO on: software GSO splits it after TC
  egress and before veth transmits, so the sender's tx counters count each segment, whole;
- GRO on the receiving veth (NAPI mode): one rx packet per segment, but rx_bytes count each
  from the network header: veth adds skb->len after eth_type_trans has pulled the 14-byte
  Ethernet header. There the oracle is rx_packets, and rx_bytes + 14 per packet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from sennet.testing.linkstats import (
    TSO_FEATURES,
    LinkStats,
    address,
    link_stats,
    set_features,
    settled,
    tcp_bulk,
)
from sennet.testing.netlab import VethPair, veth_pair
from tests.datapath_harness import FEATURE_SETS, LOADERS, Running, running
from tests.frames import MAC_A, MAC_B, cases

pytestmark = pytest.mark.kernel

ETH_HLEN = 14
MTU = 1500
FRAME_MAX = MTU + ETH_HLEN  # the largest frame a segment of this link can be
BULK = 4 << 20


def tagged(vid: int, payload: int, outer: type[Dot1Q] = Dot1Q) -> bytes:
    return bytes(
        Ether(src=MAC_B, dst=MAC_A)
        / outer(vlan=vid)
        / IP(src="10.3.0.1", dst="10.3.0.2")
        / UDP(sport=3, dport=4)
        / Raw(b"t" * payload)
    )


def ours(dp: Running) -> LinkStats:
    t = dp.totals()
    return LinkStats(t["rx"][0], t["rx"][1], t["tx"][0], t["tx"][1])


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("features", FEATURE_SETS)
def test_tagged_frames_count_what_the_interface_counts_in_both_directions(
    net: VethPair, pin_root: Path, loader: str, features: str
) -> None:
    frames = [tagged(7, n) for n in (0, 50, 900)] + [tagged(8, 20, Dot1AD)]
    frames += [c.frame for c in cases()]  # untagged, Q-in-Q and malformed ones too
    assert sum(f[12:14] in (b"\x81\x00", b"\x88\xa8") for f in frames) == 6
    with running(net, pin_root / "p", loader, features=FEATURE_SETS[features]) as dp:
        before = link_stats(net.ns_a, net.if_a)
        net.send_to_a(frames)
        net.send_from_a(frames)
        kernel = settled(net.ns_a, net.if_a) - before
        assert ours(dp) == kernel
    wire = sum(map(len, frames))
    assert kernel == LinkStats(len(frames), wire, len(frames), wire)


def bulk_link(net: VethPair, sender: str, receiver_gro: bool) -> tuple[str, str]:
    """Addresses on the pair; the sender segments in software (TSO off, GSO on) so each
    segment crosses veth as a frame; GRO on the receiver as asked."""
    a, b = address(net)
    ns, ifname = (net.ns_a, net.if_a) if sender == "a" else (net.ns_b, net.if_b)
    set_features(ns, ifname, dict.fromkeys(TSO_FEATURES, False))
    ns, ifname = (net.ns_b, net.if_b) if sender == "a" else (net.ns_a, net.if_a)
    set_features(ns, ifname, {"rx-gro": receiver_gro})
    return a, b


@pytest.fixture
def net1500(root: None) -> Iterator[VethPair]:
    """A pair at the usual Ethernet MTU, so a bulk transfer makes many segments."""
    with veth_pair(mtu=MTU) as pair:
        yield pair


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("features", FEATURE_SETS)
def test_gso_aggregates_leaving_count_as_the_segments_the_interface_sent(
    net1500: VethPair, pin_root: Path, loader: str, features: str
) -> None:
    net = net1500
    _, b = bulk_link(net, sender="a", receiver_gro=False)
    with running(
        net, pin_root / "p", loader, large=FRAME_MAX, features=FEATURE_SETS[features]
    ) as dp:
        before = link_stats(net.ns_a, net.if_a)
        tcp_bulk(net.ns_a, net.ns_b, b, BULK)
        kernel = settled(net.ns_a, net.if_a) - before
        assert ours(dp) == kernel  # each segment whole, as veth_xmit counted it
        # Aggregates of ~64 KiB crossed the hook, but no segment is above the frame size.
        assert dp.kinds() == Counter()
    assert kernel.tx_packets >= BULK // MTU


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("features", FEATURE_SETS)
def test_gro_aggregates_arriving_count_as_the_segments_the_interface_received(
    net1500: VethPair, pin_root: Path, loader: str, features: str
) -> None:
    net = net1500
    a, _ = bulk_link(net, sender="b", receiver_gro=True)
    with running(
        net, pin_root / "p", loader, large=FRAME_MAX, features=FEATURE_SETS[features]
    ) as dp:
        net.drain_socket("a")
        before = link_stats(net.ns_a, net.if_a)
        tcp_bulk(net.ns_b, net.ns_a, a, BULK)
        kernel = settled(net.ns_a, net.if_a) - before
        seen = net.receive_on("a", 50, timeout=0.5)
        got = ours(dp)
        assert dp.kinds() == Counter()  # aggregates are large, their segments are not
    # GRO did aggregate: the packet socket on `a` received skbs longer than any frame.
    assert max(map(len, seen)) > FRAME_MAX
    assert (got.rx_packets, got.tx_packets, got.tx_bytes) == (
        kernel.rx_packets,
        kernel.tx_packets,
        kernel.tx_bytes,
    )
    assert got.rx_bytes == kernel.rx_bytes + ETH_HLEN * kernel.rx_packets
    assert kernel.rx_packets >= BULK // MTU


@pytest.mark.parametrize("features", FEATURE_SETS)
def test_large_packet_for_an_aggregate_reports_its_segment_size(
    net1500: VethPair, pin_root: Path, features: str
) -> None:
    """With the threshold one byte below a full segment, aggregates of full segments raise
    large_packet, and the event carries the segment's length, not the aggregate's."""
    net = net1500
    _, b = bulk_link(net, sender="a", receiver_gro=False)
    with running(net, pin_root / "p", large=FRAME_MAX - 1, features=FEATURE_SETS[features]) as dp:
        tcp_bulk(net.ns_a, net.ns_b, b, BULK)
        settled(net.ns_a, net.if_a)
        events = dp.events()
    assert events, "full-size segments crossed egress"
    assert {(e.kind.label, e.direction.label, e.pkt_len) for e in events} == {
        ("large_packet", "tx", FRAME_MAX)
    }

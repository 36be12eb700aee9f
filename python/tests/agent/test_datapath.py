"""The TC programs on a real kernel: exact counts, exact events, both loaders.

Every test sends frames over a veth pair in namespaces it owns; the agent side
`a` is the monitored interface. Expected lengths follow tests/frames.py: the
programs count the bytes on the wire, which is len(frame) for what a packet
socket sends, an outer VLAN tag the receiving stack strips before TC ingress
included (test_datapath_wire.py checks them against the interface's own counters).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from sennet.testing.netlab import VethPair
from tests.datapath_harness import FEATURE_SETS, LOADERS, running
from tests.frames import KIND_ORDER, MAC_A, MAC_B, cases

pytestmark = pytest.mark.kernel


def udp_frame(payload: int, src: str = "10.1.0.1", dst: str = "10.1.0.2") -> bytes:
    return bytes(
        Ether(src=MAC_B, dst=MAC_A)
        / IP(src=src, dst=dst)
        / UDP(sport=1111, dport=2222)
        / Raw(b"u" * payload)
    )


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("features", FEATURE_SETS)
def test_rx_counts_exact_packets_and_bytes(
    net: VethPair, pin_root: Path, loader: str, features: str
) -> None:
    frames = [udp_frame(18)] * 5 + [udp_frame(500)] * 3
    assert [len(f) for f in frames[:1] + frames[-1:]] == [60, 542]
    with running(net, pin_root / "p", loader, features=FEATURE_SETS[features]) as dp:
        net.send_to_a(frames)
        assert dp.totals() == {"rx": (8, 5 * 60 + 3 * 542), "tx": (0, 0)}
        assert dp.kinds() == Counter()


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("features", FEATURE_SETS)
def test_tx_counts_frames_leaving_the_monitored_interface(
    net: VethPair, pin_root: Path, loader: str, features: str
) -> None:
    with running(net, pin_root / "p", loader, features=FEATURE_SETS[features]) as dp:
        net.send_from_a([udp_frame(100)] * 4 + [udp_frame(1100)])
        assert dp.totals() == {"rx": (0, 0), "tx": (5, 4 * 142 + 1142)}
        (ev,) = dp.events()
        assert (ev.kind.label, ev.direction.label, ev.pkt_len) == ("large_packet", "tx", 1142)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("features", FEATURE_SETS)
def test_every_case_gives_exact_event_kinds_and_rx_lengths(
    net: VethPair, pin_root: Path, loader: str, features: str
) -> None:
    all_cases = cases()
    with running(net, pin_root / "p", loader, features=FEATURE_SETS[features]) as dp:
        net.send_to_a([c.frame for c in all_cases])
        events = dp.events()
        expected_bytes = sum(c.rx_len for c in all_cases)
        assert dp.totals() == {"rx": (len(all_cases), expected_bytes), "tx": (0, 0)}
        # Events come in send order; within a frame, in kind order.
        expected = [(c.name, k) for c in all_cases for k in c.kinds]
        assert [e.kind.label for e in events] == [k for _, k in expected]
        assert {e.ifindex for e in events} == {net.ifindex_a}
        assert {e.direction.label for e in events} == {"rx"}
        by_case = iter(events)
        for c in all_cases:
            for _kind in c.kinds:
                assert next(by_case).pkt_len == c.rx_len, c.name
        wanted = Counter(k for _, k in expected)
        assert dp.detected() == dict(wanted)
        assert dp.drops() == {}
        assert set(wanted) == set(KIND_ORDER), "every kind is exercised"


def test_event_fields_carry_addresses_ports_and_flags(net: VethPair, pin_root: Path) -> None:
    by_name = {c.name: c for c in cases()}
    with running(net, pin_root / "p") as dp:
        net.send_to_a(
            [
                by_name[n].frame
                for n in ("large_udp", "tcp_xmas_v6", "land_v4", "vlan_land", "qinq_syn_fin")
            ]
        )
        large, xmas6, land4, vlan_land, qinq = dp.events()
    assert (large.ip_version, large.saddr, large.daddr) == (4, "10.1.0.1", "10.1.0.2")
    assert (large.l4_proto, large.sport, large.dport, large.pkt_len) == (17, 1111, 2222, 1242)
    assert (large.eth_proto, large.vlan_tags) == (0x0800, 0)
    assert (xmas6.ip_version, xmas6.saddr, xmas6.daddr) == (6, "fd00::1", "fd00::2")
    assert (xmas6.l4_proto, xmas6.sport, xmas6.dport, xmas6.tcp_flags) == (6, 5, 6, 0x29)
    assert (land4.saddr, land4.daddr, land4.sport, land4.tcp_flags) == (
        "10.1.0.9",
        "10.1.0.9",
        139,
        0x02,
    )
    # The outer tag was stripped into skb metadata by the receiving stack, so not in the
    # data the parser sees, but it was on the wire: pkt_len is the whole 46-byte frame.
    assert (vlan_land.saddr, vlan_land.vlan_tags, vlan_land.pkt_len) == ("10.7.7.7", 0, 46)
    # Q-in-Q: the outer 802.1ad tag is stripped, the inner 802.1Q tag stays in the data.
    assert (qinq.kind.label, qinq.vlan_tags, qinq.eth_proto, qinq.pkt_len) == (
        "tcp_syn_fin",
        1,
        0x0800,
        62,
    )


def test_vlan_tag_is_in_the_data_on_egress(net: VethPair, pin_root: Path) -> None:
    frame = bytes(
        Ether(src=MAC_A, dst=MAC_B)
        / Dot1Q(vlan=5)
        / IP(src="10.5.5.5", dst="10.5.5.5")
        / UDP(sport=1, dport=2)
    )
    with running(net, pin_root / "p") as dp:
        net.send_from_a([frame])
        (ev,) = dp.events()
        assert dp.totals()["tx"] == (1, len(frame))
    assert (ev.kind.label, ev.vlan_tags, ev.pkt_len, ev.saddr) == (
        "land",
        1,
        len(frame),
        "10.5.5.5",
    )


def test_large_packet_threshold_is_set_at_load_time(net: VethPair, pin_root: Path) -> None:
    sizes = [udp_frame(n) for n in (400, 458, 459, 1000)]  # frames of 442, 500, 501, 1042 bytes
    with running(net, pin_root / "a", large=500) as dp:
        net.send_to_a(sizes)
        assert [e.pkt_len for e in dp.events()] == [501, 1042]
    with running(net, pin_root / "b", large=1042) as dp:
        net.send_to_a(sizes)
        assert dp.events() == []


def test_both_loaders_give_identical_counters_and_events(net: VethPair, pin_root: Path) -> None:
    frames = [c.frame for c in cases()] + [udp_frame(n) for n in range(0, 1400, 97)]
    results = {}
    for loader in LOADERS:
        with running(net, pin_root / loader, loader) as dp:
            net.send_to_a(frames)
            net.send_from_a(frames[:7])
            events = [
                (e.kind, e.direction, e.pkt_len, e.saddr, e.daddr, e.sport, e.dport)
                for e in dp.events()
            ]
            results[loader] = (dp.totals(), events, dp.detected())
    assert results["libbpf"] == results["bcc"]
    assert results["libbpf"][0]["rx"][0] == len(frames)

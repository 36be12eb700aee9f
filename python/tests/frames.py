"""Frames built with scapy, each with the event kinds the data plane must report for it.

Lengths: the TC programs count the bytes on the wire, which for a frame sent
from a packet socket over veth is exactly len(bytes(frame)), the same as the
interface's own rx_bytes: the Ethernet header is included, there is no FCS,
and veth adds no padding to short frames. On the receive side the stack moves
an outer 802.1Q/802.1ad tag into skb metadata before TC ingress
(skb_vlan_untag): skb->len is then 4 bytes shorter and the tag is not in the
frame data the program parses, but the program counts it (vlan_present).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"
LARGE = 1000  # the threshold the tests load with


def eth() -> Ether:
    return Ether(src=MAC_B, dst=MAC_A)


@dataclass(frozen=True)
class Case:
    name: str
    frame: bytes
    kinds: tuple[str, ...]  # event kinds expected, in kernel emission order
    vlan_outer: bool = False  # an outer tag the receiving stack strips before TC

    @property
    def rx_len(self) -> int:
        """Bytes counted at TC ingress: the whole frame, a stripped outer tag included."""
        return len(self.frame)


def ip4(**fields: Any) -> Packet:
    return IP(src="10.1.0.1", dst="10.1.0.2", **fields)


def _b(p: Packet) -> bytes:
    return bytes(p)


def padded(p: Packet, to: int = 60, fill: bytes = b"\x00") -> bytes:
    """The frame as an Ethernet driver sends a short one: padded after the IP packet."""
    raw = bytes(p)
    return raw + (fill * to)[: max(0, to - len(raw))]


# Ethernet padding after an IPv4 packet whose total length cuts its TCP header short:
# read as a TCP header, byte 13 (the flags) would be FIN+PSH+URG, or 0 (zero padding).
XMAS_PADDING = b"\x00" * 9 + b"\x29" + b"\x00" * 16


def cases() -> list[Case]:
    return [
        Case("udp_small", _b(eth() / ip4() / UDP(sport=1111, dport=2222) / Raw(b"x" * 18)), ()),
        Case("icmp_echo", _b(eth() / ip4() / ICMP() / Raw(b"p" * 56)), ()),
        Case("arp", _b(eth() / ARP(psrc="10.1.0.1", pdst="10.1.0.2")), ()),
        Case(
            "large_udp",
            _b(eth() / ip4() / UDP(sport=1111, dport=2222) / Raw(b"L" * 1200)),
            ("large_packet",),
        ),
        Case("tcp_null", _b(eth() / ip4() / TCP(sport=40000, dport=80, flags=0)), ("tcp_null",)),
        Case(
            "tcp_syn_fin",
            _b(eth() / ip4() / TCP(sport=40001, dport=80, flags="SF")),
            ("tcp_syn_fin",),
        ),
        Case(
            "tcp_syn_rst",
            _b(eth() / ip4() / TCP(sport=40002, dport=80, flags="SR")),
            ("tcp_syn_rst",),
        ),
        Case(
            "tcp_xmas",
            _b(eth() / ip4() / TCP(sport=40003, dport=80, flags="FPU")),
            ("tcp_xmas",),
        ),
        Case(
            "land_v4",
            _b(eth() / IP(src="10.1.0.9", dst="10.1.0.9") / TCP(sport=139, dport=139, flags="S")),
            ("land",),
        ),
        Case("ipv4_bad_ihl", _b(eth() / ip4(ihl=3) / UDP(sport=1, dport=2)), ("ipv4_bad_ihl",)),
        Case(
            "ipv4_len_beyond_frame",
            _b(eth() / ip4(len=900) / UDP(sport=5, dport=6) / Raw(b"s" * 10)),
            ("ipv4_bad_len",),
        ),
        Case(
            "ipv4_len_below_header",
            _b(eth() / ip4(len=12) / UDP(sport=5, dport=6)),
            ("ipv4_bad_len",),
        ),
        Case(
            "truncated_ipv4",
            _b(Ether(src=MAC_B, dst=MAC_A, type=0x0800) / Raw(b"\x45\x00\x00")),
            ("truncated_l3",),
        ),
        Case(
            "truncated_ipv6",
            _b(Ether(src=MAC_B, dst=MAC_A, type=0x86DD) / Raw(b"\x60" + b"\x00" * 20)),
            ("truncated_l3",),
        ),
        Case(
            "truncated_tcp",
            _b(eth() / ip4(proto=6) / Raw(b"\x9c\x40\x00\x50")),
            ("truncated_l4",),
        ),
        Case("truncated_udp", _b(eth() / ip4(proto=17) / Raw(b"\x00\x01")), ("truncated_l4",)),
        Case("truncated_icmp", _b(eth() / ip4(proto=1) / Raw(b"\x08")), ("truncated_l4",)),
        Case(
            "padded_tcp_cut_zeros",  # zero padding read as TCP would be a NULL scan
            padded(eth() / ip4(proto=6) / Raw(b"\x9c\x40\x00\x50")),
            ("truncated_l4",),
        ),
        Case(
            "padded_tcp_cut_xmas",
            _b(eth() / ip4(proto=6, len=24) / Raw(b"\x9c\x40\x00\x50") / Raw(XMAS_PADDING)),
            ("truncated_l4",),
        ),
        Case(
            "padded_udp_cut",
            padded(eth() / ip4(proto=17) / Raw(b"\x00\x01\x00\x02"), fill=b"\x07"),
            ("truncated_l4",),
        ),
        Case(
            "padded_tcp_whole",  # a 54-byte SYN padded to 60: its own header, no event
            padded(eth() / ip4() / TCP(sport=40010, dport=80, flags="S"), fill=b"\x29"),
            (),
        ),
        Case(
            "trailer_after_tcp_cut_v6",  # payload length 4, then 20 bytes that look like TCP
            _b(
                eth()
                / IPv6(src="fd00::1", dst="fd00::2", nh=6, plen=4)
                / Raw(b"\x9c\x40\x00\x50")
                / Raw(XMAS_PADDING)
            ),
            ("truncated_l4",),
        ),
        Case(
            "tcp_xmas_v6",
            _b(eth() / IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=5, dport=6, flags="FPU")),
            ("tcp_xmas",),
        ),
        Case(
            "land_v6",
            _b(eth() / IPv6(src="fd00::7", dst="fd00::7") / UDP(sport=7, dport=7)),
            ("land",),
        ),
        Case(
            "large_xmas_land",  # one frame, three kinds: one event each
            _b(
                eth()
                / IP(src="10.2.2.2", dst="10.2.2.2")
                / TCP(sport=9, dport=9, flags="FPU")
                / Raw(b"z" * 1100)
            ),
            ("large_packet", "tcp_xmas", "land"),
        ),
        Case(
            "vlan_land",
            _b(eth() / Dot1Q(vlan=7) / IP(src="10.7.7.7", dst="10.7.7.7") / UDP(sport=7, dport=7)),
            ("land",),
            vlan_outer=True,
        ),
        Case(
            "qinq_syn_fin",
            _b(eth() / Dot1AD(vlan=8) / Dot1Q(vlan=9) / ip4() / TCP(sport=1, dport=2, flags="SF")),
            ("tcp_syn_fin",),
            vlan_outer=True,
        ),
    ]


KIND_ORDER = (
    "large_packet", "tcp_null", "tcp_syn_fin", "tcp_syn_rst", "tcp_xmas", "land",
    "ipv4_bad_ihl", "ipv4_bad_len", "truncated_l3", "truncated_l4",
)  # fmt: skip

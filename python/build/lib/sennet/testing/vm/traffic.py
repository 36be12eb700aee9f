"""Frames for the VM tests and the arithmetic of what the agent must count for them.

The agent counts the bytes on the wire, as virtio-net counts them in the guest's
own interface counters: the frame as written to the tap, an outer VLAN tag that
the guest's stack moves into skb metadata before TC runs included (see
docs/datapath.md); no FCS, no padding. A GRO aggregate counts as its segments.
"""

from __future__ import annotations

from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

GUEST_MON_MAC = "52:54:00:00:00:02"
HOST_MAC = "02:00:00:00:00:99"


def eth(dst: str = GUEST_MON_MAC) -> Ether:
    return Ether(src=HOST_MAC, dst=dst)


def rx_len(frame: Packet | bytes) -> int:
    """Bytes the agent counts for a frame received on the monitored NIC: all of it."""
    return len(bytes(frame))


def mixed() -> list[bytes]:
    """Mixed sizes, TCP/UDP/ICMP, IPv4 and IPv6, VLAN-tagged: nothing here raises an event."""
    v4 = IP(src="198.51.100.10", dst="198.51.100.20")
    v6 = IPv6(src="2001:db8::10", dst="2001:db8::20")
    frames: list[Packet] = []
    for n in (0, 18, 100, 700, 1400):
        frames.append(eth() / v4 / UDP(sport=4000 + n, dport=53) / Raw(b"u" * n))
        frames.append(eth() / v6 / UDP(sport=4000 + n, dport=53) / Raw(b"6" * n))
    for n in (0, 60, 1000):
        frames.append(eth() / v4 / TCP(sport=50000, dport=443, flags="A") / Raw(b"t" * n))
        frames.append(eth() / v6 / TCP(sport=50001, dport=443, flags="PA") / Raw(b"t" * n))
    frames += [eth() / v4 / ICMP() / Raw(b"p" * 56)] * 3
    frames += [eth() / Dot1Q(vlan=100) / v4 / UDP(sport=1, dport=2) / Raw(b"v" * 30)] * 2
    return [bytes(f) for f in frames]


def tcp_train(count: int = 40, mss: int = 1400) -> list[bytes]:
    """Back-to-back segments of one TCP stream, in order: the guest's GRO may merge them
    into aggregates before TC ingress, while virtio-net counts each one it received."""
    return [
        bytes(
            eth()
            # GRO merges IPv4 only where the IP ID counts up (or stays fixed with DF)
            / IP(src="198.51.100.30", dst="198.51.100.40", id=1000 + i, flags="DF")
            / TCP(sport=40400, dport=8080, flags="A", seq=1000 + i * mss, ack=1)
            / Raw(bytes([65 + i % 26]) * mss)
        )
        for i in range(count)
    ]


@dataclass(frozen=True)
class Expected:
    kind: str
    frame: bytes
    src: str
    dst: str
    sport: int
    dport: int


def hostile() -> list[Expected]:
    """One frame per event kind (large packets need a 9000-byte MTU on eth1)."""
    a, b = "203.0.113.5", "203.0.113.6"
    v6a, v6b = "2001:db8::5", "2001:db8::6"

    def tcp(kind: str, sport: int, flags: str | int, dst: str = b) -> Expected:
        frame = eth() / IP(src=a, dst=dst) / TCP(sport=sport, dport=22, flags=flags)
        return Expected(kind, bytes(frame), a, dst, sport, 22)

    def raw(kind: str, frame: Packet, src: str = a, dst: str = b, ports: int = 0) -> Expected:
        return Expected(kind, bytes(frame), src, dst, ports, ports + 1 if ports else 0)

    truncated_ip = Ether(src=HOST_MAC, dst=GUEST_MON_MAC, type=0x0800) / Raw(b"\x45\x00")
    v6_xmas = eth() / IPv6(src=v6a, dst=v6b) / TCP(sport=1005, dport=22, flags="FPU")
    return [
        raw(
            "large_packet",
            eth() / IP(src=a, dst=b) / UDP(sport=7, dport=8) / Raw(b"L" * 3000),
            ports=7,
        ),
        tcp("tcp_null", 1001, 0),
        tcp("tcp_syn_fin", 1002, "SF"),
        tcp("tcp_syn_rst", 1003, "SR"),
        tcp("tcp_xmas", 1004, "FPU"),
        tcp("land", 1006, "S", dst=a),
        raw("ipv4_bad_ihl", eth() / IP(src=a, dst=b, ihl=4) / UDP(sport=5, dport=6)),
        raw("ipv4_bad_len", eth() / IP(src=a, dst=b, len=1400) / UDP(sport=9, dport=10), ports=9),
        raw("truncated_l3", truncated_ip, src="", dst=""),
        raw("truncated_l4", eth() / IP(src=a, dst=b, proto=6) / Raw(b"\x00\x01")),
        Expected("tcp_xmas", bytes(v6_xmas), v6a, v6b, 1005, 22),
    ]

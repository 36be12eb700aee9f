"""Hand-built DNS frames: well formed ones (dnspython writes the messages) and malformed ones.

Each malformed case breaks exactly one rule of the data plane's parser
(docs/datapath.md, DNS), so a count that is off names the rule that broke. The
host tests send them over a veth pair, the VM suite into the appliance's NIC.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

MAC_A = "02:00:00:00:00:0a"  # the monitored side, as in the other host tests
MAC_B = "02:00:00:00:00:0b"
CLIENT4, SERVER4 = "10.9.0.1", "10.9.0.2"
CLIENT6, SERVER6 = "fd53::1", "fd53::2"
CLIENT_PORT = 40000


def header(qid: int = 0x4242, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0,
           ar: int = 0) -> bytes:  # fmt: skip
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def question(name: bytes = b"\x03www\x07example\x00", qtype: int = 1) -> bytes:
    return name + struct.pack("!HH", qtype, 1)


def udp4(payload: bytes, to_server: bool = True, ip_len: int | None = None) -> bytes:
    """A DNS message over IPv4 to (or from) port 53. `ip_len` makes the IP packet end early:
    the rest of `payload` is then Ethernet padding."""
    src, dst = (CLIENT4, SERVER4) if to_server else (SERVER4, CLIENT4)
    sport, dport = (CLIENT_PORT, 53) if to_server else (53, CLIENT_PORT)
    ip = IP(src=src, dst=dst) if ip_len is None else IP(src=src, dst=dst, len=ip_len)
    udp = UDP(sport=sport, dport=dport)
    if ip_len is not None:
        udp = UDP(sport=sport, dport=dport, len=ip_len - 20)
    return _b(Ether(src=MAC_B, dst=MAC_A) / ip / udp / Raw(payload))


def udp6(payload: bytes, to_server: bool = True) -> bytes:
    src, dst = (CLIENT6, SERVER6) if to_server else (SERVER6, CLIENT6)
    sport, dport = (CLIENT_PORT, 53) if to_server else (53, CLIENT_PORT)
    return _b(Ether(src=MAC_B, dst=MAC_A) / IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport)
              / Raw(payload))  # fmt: skip


def vlan4(payload: bytes) -> bytes:
    return _b(Ether(src=MAC_B, dst=MAC_A) / Dot1Q(vlan=53) / IP(src=CLIENT4, dst=SERVER4)
              / UDP(sport=CLIENT_PORT + 1, dport=53) / Raw(payload))  # fmt: skip


def _b(p: Packet) -> bytes:
    return bytes(p)


def query_wire(name: str, rdtype: str, qid: int) -> bytes:
    q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), use_edns=False)
    q.id = qid
    return q.to_wire()


def response_wire(name: str, rdtype: str, qid: int, rcode: dns.rcode.Rcode,
                  edns: bool = False) -> bytes:  # fmt: skip
    q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), use_edns=edns)
    q.id = qid
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    return r.to_wire()


@dataclass(frozen=True)
class Malformed:
    name: str
    frame: bytes


def malformed_cases() -> list[Malformed]:
    good = header() + question()
    long_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"  # 257 bytes
    return [
        Malformed("empty_payload", udp4(b"")),
        Malformed("truncated_header", udp4(good[:11])),
        Malformed("label_past_the_packet", udp4(header() + b"\x14abc")),
        Malformed("name_without_its_root_byte", udp4(header() + b"\x03www\x07example")),
        Malformed("pointer_in_question", udp4(header() + question(b"\xc0\x0c"))),
        Malformed("reserved_label_type", udp4(header() + question(b"\x41abc\x00"))),
        Malformed("query_with_two_questions", udp4(header(qd=2) + question() + question())),
        Malformed("query_without_question", udp4(header(qd=0) + b"\x00" * 20)),
        Malformed("response_with_two_questions",
                  udp4(header(flags=0x8180, qd=2) + question() + question(), to_server=False)),
        Malformed("absurd_qdcount", udp4(header(qd=0xFFFF) + question())),
        Malformed("absurd_ancount", udp4(header(flags=0x8180, an=1000) + question(),
                                         to_server=False)),
        Malformed("records_do_not_fit_after_the_question",
                  udp4(header(flags=0x8180, an=3) + question() + b"\x00" * 32, to_server=False)),
        Malformed("name_longer_than_255_bytes", udp4(header() + question(long_name))),
        Malformed("no_room_for_qtype", udp4(header() + b"\x03www\x07example\x00\x00\x01")),
        # A complete query in the frame, but the IP packet ends inside the name: the
        # rest is padding, which is never part of the message.
        Malformed("query_cut_by_the_ip_length", udp4(good, ip_len=20 + 8 + 12 + 6)),
        Malformed("truncated_header_v6", udp6(good[:7])),
        Malformed("pointer_in_question_vlan", vlan4(header() + question(b"\xc0\x0c"))),
    ]  # fmt: skip


def well_formed() -> list[bytes]:
    """A query and its answer (the answer spells the name in other case), an IPv6 query
    answered with EDNS (one OPT record), and a REFUSED for no query at all."""
    return [
        udp4(query_wire("WWW.Example.COM", "A", 0x1111)),
        udp4(response_wire("www.EXAMPLE.com", "A", 0x1111, dns.rcode.NXDOMAIN), to_server=False),
        udp6(query_wire("v6.example", "AAAA", 0x2222)),
        udp6(response_wire("v6.example", "AAAA", 0x2222, dns.rcode.NOERROR, edns=True), False),
        udp4(response_wire("stray.example", "TXT", 0x3333, dns.rcode.REFUSED), to_server=False),
    ]


# What well_formed() must add to the DNS counters and the names table.
WELL_FORMED_COUNTS = {
    "Q_A": 1,
    "Q_AAAA": 1,
    "R_NOERROR": 1,
    "R_NXDOMAIN": 1,
    "R_REFUSED": 1,
    "SEEN": 5,
    "MATCHED": 2,
}
WELL_FORMED_NAMES = {"www.example.com": (1, 1), "v6.example": (1, 0), "stray.example": (0, 1)}


def addressed_to(frames: list[bytes], mac: str) -> list[bytes]:
    """The same frames with another destination MAC (the appliance's monitored NIC)."""
    return [bytes.fromhex(mac.replace(":", "")) + f[6:] for f in frames]

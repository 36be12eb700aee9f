"""Generated DNS messages through the real TC programs with BPF_PROG_TEST_RUN.

Messages range from well formed (written by dnspython: any name, type, rcode,
records, EDNS) through mutated (cut, a byte changed, junk appended) to noise,
over IPv4 and IPv6, to and from port 53, with Ethernet padding after the IP
packet. For every one, on both hooks: the program returns TC_ACT_UNSPEC, leaves
the packet unchanged and counts it once; the DNS counters grow by exactly one
"seen" and exactly one of malformed / query / response; and whenever dnspython
itself (the oracle, not our code) reads the message as one question written
out in full, the data plane counted it under dnspython's QTYPE or RCODE, never
as malformed.
"""

from __future__ import annotations

import struct

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sennet.agent.counters import CounterReader
from sennet.agent.datapath import dns_layout as dl
from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.loader_types import LoadedDatapath
from sennet.agent.dns import DnsReader
from sennet.agent.events import RingBufferConsumer
from tests.fuzz.conftest import RING

pytestmark = pytest.mark.kernel

TC_ACT_UNSPEC = 0xFFFFFFFF
FUZZ = settings(
    max_examples=700,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
QTYPE_SLOT = {
    "A": dl.DnsSlot.Q_A, "AAAA": dl.DnsSlot.Q_AAAA, "CNAME": dl.DnsSlot.Q_CNAME,
    "MX": dl.DnsSlot.Q_MX, "NS": dl.DnsSlot.Q_NS, "PTR": dl.DnsSlot.Q_PTR,
    "SOA": dl.DnsSlot.Q_SOA, "SRV": dl.DnsSlot.Q_SRV, "TXT": dl.DnsSlot.Q_TXT,
    "HTTPS": dl.DnsSlot.Q_HTTPS, "SVCB": dl.DnsSlot.Q_SVCB, "ANY": dl.DnsSlot.Q_ANY,
}  # fmt: skip
RCODE_SLOT = {
    "NOERROR": dl.DnsSlot.R_NOERROR, "NXDOMAIN": dl.DnsSlot.R_NXDOMAIN,
    "SERVFAIL": dl.DnsSlot.R_SERVFAIL, "REFUSED": dl.DnsSlot.R_REFUSED,
}  # fmt: skip
PARSED = (*dl.QUERY_SLOTS, *dl.RCODE_SLOTS)


labels = st.text(alphabet="abcXYZ019-_", min_size=1, max_size=63)
names = st.lists(labels, min_size=0, max_size=6).map(lambda ls: ".".join(ls) + ".")


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A DNS message from dnspython, then perhaps mutated."""
    name = dns.name.from_text(draw(names))
    rdtype = dns.rdatatype.RdataType.make(
        draw(st.sampled_from([*QTYPE_SLOT, "CAA", "NAPTR"]) | st.integers(1, 0xFFFF))
    )
    query = dns.message.make_query(name, rdtype, use_edns=draw(st.booleans()))
    query.id = draw(st.integers(0, 0xFFFF))
    msg: dns.message.Message = query
    if draw(st.booleans()):
        msg = dns.message.make_response(query)
        msg.set_rcode(dns.rcode.Rcode(draw(st.integers(0, 15))))
        for _ in range(draw(st.integers(0, 3))):
            rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, "192.0.2.7")
            msg.answer.append(dns.rrset.from_rdata(name, 60, rd))
    wire = bytearray(msg.to_wire())
    mutation = draw(st.integers(0, 5))
    if mutation == 1 and wire:
        del wire[draw(st.integers(0, len(wire) - 1)) :]
    elif mutation == 2 and wire:
        wire[draw(st.integers(0, len(wire) - 1))] = draw(st.integers(0, 255))
    elif mutation == 3:
        wire += draw(st.binary(min_size=1, max_size=20))
    elif mutation == 4:  # the counts rewritten
        wire[4:12] = struct.pack("!HHHH", *(draw(st.integers(0, 0xFFFF)) for _ in range(4)))
    return bytes(wire)


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(frame, the DNS payload within the IP packet)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        payload = draw(st.binary(max_size=300))
    elif kind == 1:  # a plausible header, then noise
        payload = struct.pack(
            "!6H", *draw(st.lists(st.integers(0, 0xFFFF), min_size=6, max_size=6))
        )
        payload += draw(st.binary(max_size=80))
    else:
        payload = draw(messages())
    ports = (40000, 53) if draw(st.booleans()) else (53, 40000)
    udp = struct.pack("!HHHH", *ports, 8 + len(payload), 0) + payload
    if draw(st.booleans()):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         bytes([192, 0, 2, 1]), bytes([192, 0, 2, 53]))  # fmt: skip
        ethertype = 0x0800
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, b"\x20" + b"\0" * 14 + b"\1",
                         b"\x20" + b"\0" * 14 + b"\x53")  # fmt: skip
        ethertype = 0x86DD
    frame = bytes.fromhex("0200000000aa0200000000bb") + struct.pack("!H", ethertype) + ip + udp
    return frame + draw(st.binary(max_size=30)), payload  # padding after the IP packet


def oracle_slot(payload: bytes) -> dl.DnsSlot | None:
    """The slot a message dnspython reads as one fully written-out question must land in."""
    try:
        msg = dns.message.from_wire(payload)
    except (dns.exception.DNSException, ValueError, IndexError, struct.error):
        return None
    qd = struct.unpack("!H", payload[4:6])[0]
    response = bool(payload[2] & 0x80)
    if qd != 1 if not response else qd > 1:
        return None
    if qd == 1:
        q = msg.sections[0][0]
        written = q.name.to_wire() or b""
        if payload[12 : 12 + len(written)].lower() != written.lower():
            return None  # the name was compressed: a pointer is malformed in a question
    if not response:
        return QTYPE_SLOT.get(dns.rdatatype.to_text(msg.sections[0][0].rdtype), dl.DnsSlot.Q_OTHER)
    rcode = dns.rcode.to_text(dns.rcode.from_flags(int(msg.flags), 0))
    return RCODE_SLOT.get(rcode, dl.DnsSlot.R_OTHER)


def test_generated_dns_messages_never_break_the_program_and_add_up(
    datapath: LoadedDatapath,
) -> None:
    counters = CounterReader(datapath.map_fds)
    reader = DnsReader(datapath.map_fds, timeout_s=5.0, top_names=10)
    consumer = RingBufferConsumer(datapath.map_fds[layout.MAP_EVENTS], RING)
    lib = libbpf()
    oracle_hits: list[dl.DnsSlot] = []

    @FUZZ
    @given(sample=frames())
    def one(sample: tuple[bytes, bytes]) -> None:
        frame, payload = sample
        expected = oracle_slot(payload)
        for direction, fd in (
            (layout.Direction.RX, datapath.ingress_fd),
            (layout.Direction.TX, datapath.egress_fd),
        ):
            before = counters.slot_totals(layout.UNMAPPED_SLOT)[direction]
            dns_before = reader.counters()
            retval, _ns, out = lib.test_run(fd, frame, 1)
            after = counters.slot_totals(layout.UNMAPPED_SLOT)[direction]
            delta = {
                s: v - dns_before[s] for s, v in reader.counters().items() if v != dns_before[s]
            }
            assert retval == TC_ACT_UNSPEC, f"return code {retval:#x}"
            assert out == frame, "the program changed the packet"
            assert (after.packets, after.bytes) == (before.packets + 1, before.bytes + len(frame))
            assert delta.pop(dl.DnsSlot.SEEN) == 1
            delta.pop(dl.DnsSlot.MATCHED, None)
            assert list(delta.values()) == [1], delta  # malformed, or one query/response slot
            (slot,) = delta
            assert slot in (dl.DnsSlot.MALFORMED, *PARSED)
            if expected is not None:
                assert slot == expected, (payload.hex(), slot, expected)
                oracle_hits.append(slot)
        consumer.drain()

    try:
        one()
    finally:
        consumer.close()
    totals = reader.counters()
    parsed = sum(totals[s] for s in PARSED)
    assert totals[dl.DnsSlot.MALFORMED] + parsed == totals[dl.DnsSlot.SEEN]
    assert len(oracle_hits) > 100, "the oracle judged enough messages to mean something"

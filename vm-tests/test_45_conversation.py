"""Flows, DNS and TCP health end to end: a scapy-built conversation replayed into the
appliance's monitored NIC as a mirror port delivers it (both directions arrive on
ingress), checked at the control plane.

The oracle is the conversation itself: every frame is built here, so the queries by
type, the responses by rcode, the handshakes, the retransmitted segment, the reset, the
zero window and every flow's packets and bytes are known before anything is sent. The
guest sends nothing on eth1 meanwhile (the traffic tests check its TX counters stay
put), so the control plane's deltas must equal these numbers exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Packet, Raw
from sennet.testing.controlplane import ControlPlane
from sennet.testing.errors import TestFailed
from sennet.testing.scrape import Samples, matching, sample
from sennet.testing.vm.appliance import Appliance
from sennet.testing.vm.guest import agent_id
from sennet.testing.vm.traffic import eth

CLIENT, SERVER, RESOLVER = "198.51.100.60", "198.51.100.61", "198.51.100.53"
BIG_SRC, BIG_DST = "198.51.100.80", "198.51.100.81"

Tuple = tuple[str, str, int, int, int]  # src, dst, sport, dport, IP protocol


@dataclass
class Conversation:
    frames: list[bytes] = field(default_factory=list)
    flows: Counter[Tuple] = field(default_factory=Counter)  # packets per flow
    flow_bytes: Counter[Tuple] = field(default_factory=Counter)

    def add(self, frame: Packet) -> None:
        raw = bytes(frame)
        ip = frame[IP]
        l4 = frame[TCP] if TCP in frame else frame[UDP]
        key = (ip.src, ip.dst, int(l4.sport), int(l4.dport), int(ip.proto))
        self.frames.append(raw)
        self.flows[key] += 1
        self.flow_bytes[key] += len(raw)


def dns_exchange(talk: Conversation, n: int, name: str, qtype: str, rcode: int) -> None:
    """One query from the client and its response from the resolver."""
    port = 5300 + n
    question = DNSQR(qname=name, qtype=qtype)
    talk.add(
        eth() / IP(src=CLIENT, dst=RESOLVER) / UDP(sport=port, dport=53)
        / DNS(id=0x1000 + n, rd=1, qd=question)
    )  # fmt: skip
    talk.add(
        eth() / IP(src=RESOLVER, dst=CLIENT) / UDP(sport=53, dport=port)
        / DNS(id=0x1000 + n, qr=1, rd=1, ra=1, rcode=rcode, qd=question)
    )  # fmt: skip


def tcp_connection(talk: Conversation, cport: int, *, retransmit: bool, end: str) -> None:
    """Handshake, one data segment (sent twice with `retransmit`), then the server's
    zero-window ACK or its reset."""
    c, s = IP(src=CLIENT, dst=SERVER), IP(src=SERVER, dst=CLIENT)
    talk.add(eth() / c / TCP(sport=cport, dport=80, flags="S", seq=1000, window=64240))
    talk.add(eth() / s / TCP(sport=80, dport=cport, flags="SA", seq=5000, ack=1001))
    talk.add(eth() / c / TCP(sport=cport, dport=80, flags="A", seq=1001, ack=5001))
    data = eth() / c / TCP(sport=cport, dport=80, flags="PA", seq=1001, ack=5001) / Raw(b"G" * 100)
    talk.add(data)
    if retransmit:
        talk.add(data)
    if end == "zero_window":
        talk.add(eth() / s / TCP(sport=80, dport=cport, flags="A", seq=5001, ack=1101, window=0))
    else:
        talk.add(eth() / s / TCP(sport=80, dport=cport, flags="R", seq=5001))


def conversation() -> Conversation:
    talk = Conversation()
    exchanges = [
        ("ok.example.", "A", 0),
        ("ok.example.", "A", 0),
        ("www.ok.example.", "AAAA", 0),
        ("missing.example.", "A", 3),  # NXDOMAIN
        ("missing.example.", "AAAA", 3),
        ("broken.example.", "A", 2),  # SERVFAIL
    ]
    for n, (name, qtype, rcode) in enumerate(exchanges):
        dns_exchange(talk, n, name, qtype, rcode)
    tcp_connection(talk, 40001, retransmit=True, end="zero_window")
    tcp_connection(talk, 40002, retransmit=False, end="reset")
    for i in range(30):  # many small flows, one packet each
        talk.add(
            eth() / IP(src="198.51.100.70", dst="198.51.100.71")
            / UDP(sport=6000 + i, dport=7000) / Raw(b"s" * 10)
        )  # fmt: skip
    for k, size in enumerate((1000, 900, 800)):  # three big talkers, 10 packets each
        for _ in range(10):
            talk.add(
                eth() / IP(src=BIG_SRC, dst=BIG_DST) / UDP(sport=9000 + k, dport=9999)
                / Raw(b"B" * size)
            )  # fmt: skip
    return talk


FIGURES = {
    # name: (family, labels)
    "queries_a": ("sennet_dns_queries_total", {"type": "A"}),
    "queries_aaaa": ("sennet_dns_queries_total", {"type": "AAAA"}),
    "noerror": ("sennet_dns_responses_total", {"rcode": "NOERROR"}),
    "nxdomain": ("sennet_dns_responses_total", {"rcode": "NXDOMAIN"}),
    "servfail": ("sennet_dns_responses_total", {"rcode": "SERVFAIL"}),
    "dns_latency": ("sennet_dns_latency_seconds_count", {}),
    "dns_malformed": ("sennet_dns_malformed_total", {}),
    "syn_rtt": ("sennet_tcp_syn_rtt_seconds_count", {}),
    "synack_rtt": ("sennet_tcp_synack_rtt_seconds_count", {}),
    "retransmits": ("sennet_tcp_retransmits_total", {}),
    "resets_rx": ("sennet_tcp_resets_total", {"direction": "rx"}),
    "zero_windows": ("sennet_tcp_zero_windows_total", {}),
    "tcp_malformed": ("sennet_tcp_malformed_total", {}),
    "flows_created": ("sennet_flow_created_total", {}),
    "flows_lost": ("sennet_flow_lost_total", {}),
}


def figures(samples: Samples, agent: str) -> dict[str, float]:
    return {
        name: sample(samples, family, agent=agent, **labels) or 0.0
        for name, (family, labels) in FIGURES.items()
    }


def talker_totals(cp: ControlPlane, agent: str) -> dict[int, tuple[int, int]]:
    """Packets and bytes of the big flows summed over every stored interval's top talkers."""
    rows = cp.query(
        "SELECT t.src_port, sum(t.packets), sum(t.bytes) FROM talkers t "
        "JOIN heartbeats h ON h.heartbeat_id = t.heartbeat_id "
        "WHERE h.agent_id = ? AND t.src_addr = ? AND t.dst_addr = ? GROUP BY t.src_port",
        agent,
        BIG_SRC,
        BIG_DST,
    )
    return {int(port): (int(p), int(b)) for port, p, b in rows}


def test_a_mirrored_conversation_arrives_as_exact_flow_dns_and_tcp_figures(
    appliance: Appliance, control_plane: ControlPlane
) -> None:
    agent = agent_id(appliance.machine)
    talk = conversation()
    before = figures(control_plane.samples(), agent)
    talkers_before = talker_totals(control_plane, agent)
    assert not talkers_before, "the big flows' addresses are this test's own"
    expected = dict(before)
    for name, delta in {
        "queries_a": 4,
        "queries_aaaa": 2,
        "noerror": 3,
        "nxdomain": 2,
        "servfail": 1,
        "dns_latency": 6,  # every response matched its query
        "syn_rtt": 2,
        "synack_rtt": 2,
        "retransmits": 1,
        "resets_rx": 1,
        "zero_windows": 1,
        "flows_created": len(talk.flows),
    }.items():
        expected[name] += delta
    assert len(talk.flows) == 12 + 4 + 30 + 3

    appliance.tap.send(talk.frames)
    big = {
        sport: (talk.flows[key], talk.flow_bytes[key])
        for key in talk.flows
        if key[0] == BIG_SRC
        for sport in [key[2]]
    }
    last: tuple[dict[str, float], dict[int, tuple[int, int]]] = ({}, {})

    def arrived() -> bool:
        nonlocal last
        last = (figures(control_plane.samples(), agent), talker_totals(control_plane, agent))
        return last == (expected, big)

    try:
        control_plane.wait_until("the conversation's figures", arrived, timeout=60)
    except TestFailed:
        shown, talkers = last
        wrong = {k: (shown.get(k), v) for k, v in expected.items() if shown.get(k) != v}
        raise TestFailed(
            f"control plane (shown, expected): {wrong}; big talkers {talkers}, expected {big}"
        ) from None
    # The top talkers of the latest interval are bounded: never more than the agent's N.
    ranks = matching(control_plane.samples(), "sennet_flow_top_talker_bytes", agent=agent)
    assert 0 < len(ranks) <= 10

"""The receive side at XDP gives what TC ingress gives: the same traffic through `attach = tc`
and `attach = xdp` (generic and native), both loaders, compared figure by figure, and each
against the kernel's own interface counters (IFLA_STATS64, what `ip -s link` prints).

The traffic: mixed sizes over IPv4 and IPv6, VLAN-tagged and Q-in-Q frames, one frame
for every event kind (tests/frames.py), DNS queries and answers, and a TCP conversation
with a retransmission, a zero window and a reset. What differs by design, and is checked
as such: an event's `vlan_tags` counts the tags in the frame data, and at TC ingress the
stack has already moved the outer one into skb metadata, while XDP sees the frame as it
arrived.

Native versus generic on veth (measured here): the driver refuses native XDP above an MTU
of about 3.5 KB (a frame must fit a page), so on the 9000-byte test pair "auto" falls back
to generic, which the attach reports; at MTU 1500 it gets native. In native mode veth
counts rx_bytes from the network header (it adds skb->len after eth_type_trans pulled the
14-byte Ethernet header), so there the oracle is rx_packets and rx_bytes + 14 per packet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.dns import DnsReader
from sennet.agent.snapshot import Event
from sennet.agent.tcp_health import read_counters
from sennet.testing.dnsframes import WELL_FORMED_COUNTS, addressed_to, well_formed
from sennet.testing.linkstats import LinkStats, link_stats, settled
from sennet.testing.netlab import VethPair, veth_pair
from tests.datapath_harness import LOADERS, Running, running
from tests.frames import MAC_A, MAC_B, cases

pytestmark = pytest.mark.kernel

ETH_HLEN = 14
CLIENT, SERVER = "192.0.2.10", "192.0.2.20"


def eth() -> Ether:
    return Ether(src=MAC_B, dst=MAC_A)


def mixed() -> list[bytes]:
    """Mixed sizes, IPv4 and IPv6, TCP and UDP, tagged and Q-in-Q: no event among them."""
    v4 = IP(src="198.51.100.10", dst="198.51.100.20")
    v6 = IPv6(src="2001:db8::10", dst="2001:db8::20")
    frames = []
    for n in (0, 18, 100, 700, 900):  # below the harness's large_packet threshold
        frames.append(eth() / v4 / UDP(sport=4000 + n, dport=9) / Raw(b"u" * n))
        frames.append(eth() / v6 / UDP(sport=4000 + n, dport=9) / Raw(b"6" * n))
    frames += [eth() / Dot1Q(vlan=100) / v4 / UDP(sport=1, dport=2) / Raw(b"v" * 30)] * 2
    frames += [eth() / Dot1AD(vlan=7) / Dot1Q(vlan=8) / v6 / UDP(sport=3, dport=4)]
    return [bytes(f) for f in frames]


def conversation() -> list[bytes]:
    """One TCP connection seen from the monitored side: SYN, SYN/ACK, ACK, two data
    segments, the second sent again (a retransmission), a zero window, a reset."""
    c2s = IP(src=CLIENT, dst=SERVER)
    s2c = IP(src=SERVER, dst=CLIENT)
    seg = [
        c2s / TCP(sport=40000, dport=80, flags="S", seq=100),
        s2c / TCP(sport=80, dport=40000, flags="SA", seq=500, ack=101),
        c2s / TCP(sport=40000, dport=80, flags="A", seq=101, ack=501),
        c2s / TCP(sport=40000, dport=80, flags="PA", seq=101, ack=501) / Raw(b"x" * 200),
        c2s / TCP(sport=40000, dport=80, flags="PA", seq=301, ack=501) / Raw(b"y" * 200),
        c2s / TCP(sport=40000, dport=80, flags="PA", seq=301, ack=501) / Raw(b"y" * 200),
        s2c / TCP(sport=80, dport=40000, flags="A", seq=501, ack=501, window=0),
        c2s / TCP(sport=40000, dport=80, flags="R", seq=501),
    ]
    return [bytes(eth() / s) for s in seg]


def traffic() -> list[bytes]:
    return (
        mixed() + [c.frame for c in cases()] + addressed_to(well_formed(), MAC_A) + conversation()
    )


@dataclass(frozen=True)
class Figures:
    """Everything the data plane made of the traffic, by hook."""

    rx_hook: str
    totals: dict[str, tuple[int, int]]
    events: list[tuple[object, ...]]
    vlan_tags: list[int]
    detected: dict[str, int]
    flows: dict[bytes, tuple[int, ...]]
    dns: dict[str, int]
    tcp: dict[str, int]
    kernel: LinkStats


def flows(dp: Running) -> dict[bytes, tuple[int, ...]]:
    """The flow table, key by key, without the timestamps (they differ by nature)."""
    lb, fd = libbpf(), dp.manager.loaded.map_fds[layout.MAP_FLOWS]  # type: ignore[union-attr]
    out = {}
    for key in lb.keys(fd, layout.FLOW_KEY.itemsize):
        raw = lb.lookup(fd, key, layout.FLOW.itemsize)
        assert raw is not None
        f = dict(zip(layout.FLOW.names, layout.FLOW.struct.unpack(raw), strict=True))
        names = ("packets", "bytes", "next_seq", "retrans", "zero_windows", "tcp_flags", "state")
        out[key] = tuple(int(f[n]) for n in names)
    return out


def event_fields(e: Event) -> tuple[object, ...]:
    """An event without its time (which differs by nature) and its tag count (see above)."""
    return (
        *(e.kind.label, e.direction.label, e.ifindex, e.pkt_len, e.ip_version, e.l4_proto),
        *(e.saddr, e.daddr, e.sport, e.dport, e.tcp_flags, e.eth_proto),
    )


def measure(
    net: VethPair,
    pins: Path,
    loader: str,
    attach: str,
    mode: str = "auto",
    features: layout.Feature = layout.FEATURES_ALL,
) -> Figures:
    frames = traffic()
    with running(net, pins, loader, attach_rx=attach, xdp_mode=mode, features=features) as dp:
        before = link_stats(net.ns_a, net.if_a)
        net.send_to_a(frames)
        kernel = settled(net.ns_a, net.if_a) - before
        events = dp.events()
        fds = dp.manager.loaded.map_fds  # type: ignore[union-attr]
        dns = DnsReader(fds, 5.0, 10).counters()
        tcp = read_counters(fds[layout.MAP_TCP_COUNTERS], libbpf().possible_cpus())
        return Figures(
            rx_hook=dp.rx_hook,
            totals=dp.totals(),
            events=[event_fields(e) for e in events],
            vlan_tags=[e.vlan_tags for e in events],
            detected=dp.detected(),
            flows=flows(dp),
            dns={s.name: n for s, n in dns.items() if n},
            tcp={s.name.lower(): n for s, n in tcp.items() if n},
            kernel=kernel,
        )


@pytest.fixture
def net1500(root: None) -> Iterator[VethPair]:
    """A pair at the usual Ethernet MTU: veth takes native XDP there."""
    with veth_pair(mtu=1500) as pair:
        yield pair


def check_same(tc: Figures, xdp: Figures) -> None:
    assert xdp.totals == tc.totals
    assert xdp.events == tc.events
    assert xdp.detected == tc.detected
    assert xdp.flows == tc.flows
    assert xdp.dns == tc.dns
    assert xdp.tcp == tc.tcp
    # The tag TC finds in metadata is in the data at XDP.
    outer = [int(f[12:14] in (b"\x81\x00", b"\x88\xa8")) for f in event_frames()]
    assert xdp.vlan_tags == [t + o for t, o in zip(tc.vlan_tags, outer, strict=True)]


def event_frames() -> list[bytes]:
    """The frame behind each event, in the order the events come (send order, then kind)."""
    return [c.frame for c in cases() for _ in c.kinds]


def expected_kinds() -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cases():
        for k in c.kinds:
            out[k] = out.get(k, 0) + 1
    return out


def check_oracles(f: Figures, native: bool) -> None:
    frames = traffic()
    wire = sum(map(len, frames))
    kernel = f.kernel
    assert kernel.rx_packets == len(frames)
    assert f.totals["rx"][0] == kernel.rx_packets
    if native:
        assert f.totals["rx"][1] == kernel.rx_bytes + ETH_HLEN * kernel.rx_packets == wire
    else:
        assert f.totals["rx"][1] == kernel.rx_bytes == wire
    assert f.totals["tx"] == (0, 0)
    assert f.detected == expected_kinds()
    assert f.dns == {**WELL_FORMED_COUNTS}
    # One retransmission and one zero window (the conversation); resets as the frames carry
    # them, read by scapy (the conversation's and the SYN+RST hostile frame).
    resets = sum(
        1 for fr in frames if TCP in (p := Ether(fr)) and len(p[TCP]) >= 20 and p[TCP].flags.R
    )
    assert resets == 2
    assert (f.tcp["retrans"], f.tcp["zero_window"], f.tcp["rst_rx"]) == (1, 1, resets)


@pytest.mark.parametrize("loader", LOADERS)
def test_xdp_generic_counts_and_reports_what_tc_ingress_does(
    net: VethPair, pin_root: Path, loader: str
) -> None:
    tc = measure(net, pin_root / "tc", loader, "tc")
    xdp = measure(net, pin_root / "xdp", loader, "xdp")
    assert (tc.rx_hook, xdp.rx_hook) == ("tc", "xdp-generic")  # MTU 9000: no native on veth
    check_oracles(tc, native=False)
    check_oracles(xdp, native=False)
    check_same(tc, xdp)


@pytest.mark.parametrize("loader", LOADERS)
def test_xdp_native_counts_and_reports_what_tc_ingress_does(
    net1500: VethPair, pin_root: Path, loader: str
) -> None:
    net = net1500
    tc = measure(net, pin_root / "tc", loader, "tc")
    xdp = measure(net, pin_root / "xdp", loader, "xdp")
    assert (tc.rx_hook, xdp.rx_hook) == ("tc", "xdp-native")
    check_oracles(tc, native=False)
    check_oracles(xdp, native=True)
    check_same(tc, xdp)


def test_xdp_generic_on_request_and_detach_leaves_no_program(
    net1500: VethPair, pin_root: Path
) -> None:
    from sennet.agent.datapath import xdp

    net = net1500
    with running(net, pin_root / "p", attach_rx="xdp", xdp_mode="generic") as dp:
        assert dp.rx_hook == "xdp-generic"
        run = dp.manager.tc.run  # in the pair's namespace
        assert run(xdp.rx_hook, net.ifindex_a) == "xdp-generic"
        # TC ingress holds no filter of ours: the receive side is counted once.
        assert dp.manager.tc.filters(net.ifindex_a, 0xFFFFFFF2) == []
        dp.manager.detach()
        assert run(xdp.query, net.ifindex_a).mode == ""


@pytest.mark.parametrize("loader", LOADERS)
def test_xdp_native_with_every_feature_off_counts_and_reports_what_tc_ingress_does(
    net1500: VethPair, pin_root: Path, loader: str
) -> None:
    """With no feature after the counters a plain frame takes the program's short path
    (counted_plain) at either hook; every other frame, and every event, the full parser."""
    net, off = net1500, layout.Feature(0)
    tc = measure(net, pin_root / "tc", loader, "tc", features=off)
    xdp = measure(net, pin_root / "xdp", loader, "xdp", features=off)
    assert (tc.rx_hook, xdp.rx_hook) == ("tc", "xdp-native")
    frames = traffic()
    wire = sum(map(len, frames))
    assert tc.kernel.rx_packets == xdp.kernel.rx_packets == len(frames)
    assert tc.totals == xdp.totals == {"rx": (len(frames), wire), "tx": (0, 0)}
    assert tc.detected == xdp.detected == expected_kinds()
    assert xdp.events == tc.events
    assert (tc.flows, tc.dns, tc.tcp) == (xdp.flows, xdp.dns, xdp.tcp) == ({}, {}, {})


def _programs_using(pinned_map: Path) -> list[str]:
    """Names of the kernel's loaded programs that use the map pinned at `pinned_map`, as
    bpftool (the oracle) lists them."""
    import json
    import subprocess

    def bpftool(*args: str) -> object:
        out = subprocess.run(["bpftool", "-j", *args], capture_output=True, check=True).stdout
        return json.loads(out)

    info = bpftool("map", "show", "pinned", str(pinned_map))
    assert isinstance(info, dict)
    progs = bpftool("prog", "show")
    assert isinstance(progs, list)
    return sorted(p["name"] for p in progs if info["id"] in p.get("map_ids", []))


def test_attach_tc_loads_no_xdp_program_and_removes_a_previous_runs_by_name(
    net1500: VethPair, pin_root: Path
) -> None:
    """`attach = tc` leaves sennet_xdp out of the load (the verifier's third program, about
    0.6 s of a start under TCG); an XDP program a previous `attach = xdp` run left on the
    interface is still recognised as ours by its name and removed."""
    from sennet.agent.datapath import xdp

    net = net1500
    pins = pin_root / "p"
    with running(net, pins, attach_rx="xdp", xdp_mode="generic", detach=False) as dp:
        assert dp.rx_hook == "xdp-generic"
        assert dp.manager.loaded is not None and dp.manager.loaded.xdp_fd >= 0
        assert _programs_using(pins / layout.MAP_COUNTERS) == [
            "sennet_egress",
            "sennet_ingress",
            "sennet_xdp",
        ]
    with running(net, pins, attach_rx="tc") as dp:
        assert dp.manager.loaded is not None and dp.manager.loaded.xdp_fd == -1
        assert dp.rx_hook == "tc"
        assert dp.manager.tc.run(xdp.query, net.ifindex_a).mode == ""
        # The previous run's programs go with their hooks (the kernel frees a replaced
        # program after an RCU grace period, so bpftool may list it a moment longer); this
        # load made two.
        expected = ["sennet_egress", "sennet_ingress"]
        deadline = time.monotonic() + 10
        while (now := _programs_using(pins / layout.MAP_COUNTERS)) != expected:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert now == expected

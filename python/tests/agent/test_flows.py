"""Flows on a real kernel: exact per-flow counts, top talkers, ended, idle and lost flows.

Traffic is built with scapy, so every flow's packets and bytes are known before
it is sent (bytes on the wire: len(frame), an outer VLAN tag the receiving
stack strips included). The interface's own counters (IFLA_STATS64, as
`ip -s link` shows them) check that the flows add up to what crossed the link,
and the kernel's own key walk (bpf_map_get_next_key, not our batch reader)
says what the table held.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from sennet.agent import config
from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.flows import FlowTracker, _Compact
from sennet.agent.insights import Insights
from sennet.agent.telemetry import FlowReport, Talker
from sennet.testing.linkstats import (
    TSO_FEATURES,
    address,
    link_stats,
    set_features,
    settled,
    tcp_bulk,
)
from sennet.testing.netlab import VethPair, veth_pair
from tests.conftest import REPO
from tests.datapath_harness import LOADERS, Running, running
from tests.flow_traffic import frame, names, send_settled, tracker

pytestmark = pytest.mark.kernel

FlowId = tuple[int, int, str, str, int, int, int]  # version, proto, saddr, daddr, ports, vlan


@dataclass(frozen=True)
class Flow:
    """One flow of the test traffic: a frame sent `count` times."""

    frame: bytes
    count: int
    fid: FlowId

    @property
    def bytes(self) -> int:
        return self.count * len(self.frame)


def mixed_flows(n_each: int = 8) -> list[Flow]:
    """IPv4 UDP, IPv6 TCP and VLAN-tagged IPv4 UDP flows, each with its own packets and bytes."""
    flows = []
    for i in range(n_each):
        count, payload = 1 + i % 5, 10 + 37 * i
        src, dst = f"10.20.{i}.1", "10.30.0.2"
        l3 = IP(src=src, dst=dst) / UDP(sport=1000 + i, dport=53)
        flows.append(Flow(frame(l3, 0, payload), count, (4, 17, src, dst, 1000 + i, 53, 0)))
        src6, dst6 = f"fd00::{i + 1:x}", "fd00::ff"
        l3_6 = IPv6(src=src6, dst=dst6) / TCP(sport=2000 + i, dport=443, flags="A")
        fid6: FlowId = (6, 6, src6, dst6, 2000 + i, 443, 0)
        flows.append(Flow(frame(l3_6, 0, payload + 3), count + 1, fid6))
        l3 = IP(src=src, dst="10.40.0.2") / UDP(sport=3000 + i, dport=123)
        fidv: FlowId = (4, 17, src, "10.40.0.2", 3000 + i, 123, 100 + i)
        flows.append(Flow(frame(l3, 100 + i, payload + 5), count + 2, fidv))
    return flows


def interleaved(flows: list[Flow]) -> list[bytes]:
    """Every flow's frames, round robin, so no flow is sent as one block."""
    out = []
    for r in range(max(f.count for f in flows)):
        out += [f.frame for f in flows if f.count > r]
    return out


def fid_of(t: Talker) -> FlowId:
    return (t.ip_version, t.l4_proto, t.saddr, t.daddr, t.sport, t.dport, t.vlan_id)


def table_size(dp: Running) -> int:
    """Entries in FLOWS by the kernel's own key walk (one syscall per key: test only)."""
    fd = dp.manager.loaded.map_fds[layout.MAP_FLOWS]  # type: ignore[union-attr]
    return sum(1 for _ in libbpf().keys(fd, layout.FLOW_KEY.itemsize))


def accounted(t: FlowTracker, r: FlowReport) -> int:
    """Every flow created in this tracker's lifetime is active, ended, lost or evicted."""
    return (
        r.active
        + r.ended_total
        + r.lost_total
        + r.evicted_total
        - (r.created_total - t.created_base)
    )


def flow_results(net: VethPair, dp: Running) -> tuple[dict[FlowId, tuple[int, int]], FlowReport]:
    """Send the mixed traffic once and read it through the agent's Insights."""
    flows = mixed_flows()
    cfg = config.build(None, environ={}, flags={"interfaces": [net.if_a], "flow_top_n": 100})
    insights = Insights(dp.manager.loaded.map_fds, cfg)  # type: ignore[union-attr]
    kernel = send_settled(net, interleaved(flows))
    insights.refresh(dp.manager.attached)
    report = insights.latest.flows
    assert report is not None
    got = {fid_of(t): (t.packets, t.bytes) for t in report.top_talkers}
    assert {(t.ifname, t.direction) for t in report.top_talkers} == {(net.if_a, "rx")}
    # The flows add up to what the interface itself received.
    assert (sum(p for p, _ in got.values()), sum(b for _, b in got.values())) == (
        kernel.rx_packets,
        kernel.rx_bytes,
    )
    return got, report


def test_both_loaders_count_every_flow_exactly_and_identically(
    net: VethPair, pin_root: Path
) -> None:
    flows = mixed_flows()
    expected = {f.fid: (f.count, f.bytes) for f in flows}
    results = {}
    for loader in LOADERS:
        with running(net, pin_root / loader, loader) as dp:
            got, report = flow_results(net, dp)
            assert got == expected, loader
            assert (report.active, report.created_total, report.lost_total) == (
                len(flows),
                len(flows),
                0,
            )
            assert report.capacity == layout.FLOW_CAPACITY_DEFAULT
            results[loader] = got
    assert results["libbpf"] == results["bcc"]
    assert len(expected) == 24 and sum(p for p, _ in expected.values()) == 87


def test_top_talkers_are_the_n_largest_by_interval_bytes(net: VethPair, pin_root: Path) -> None:
    flows = mixed_flows()
    by_bytes = sorted(flows, key=lambda f: (-f.bytes, -f.count))
    assert by_bytes[4].bytes > by_bytes[5].bytes, "the test traffic has a clear top 5"
    with running(net, pin_root / "p") as dp:
        send_settled(net, interleaved(flows))
        t = tracker(dp, top_n=5)  # takes in the first round: the deltas start here
        kernel = send_settled(net, interleaved(flows))
        report = t.read(names(dp))
    top = [(fid_of(x), x.packets, x.bytes) for x in report.top_talkers]
    assert top == [(f.fid, f.count, f.bytes) for f in by_bytes[:5]]
    assert kernel.rx_bytes == sum(f.bytes for f in flows)
    assert report.active == len(flows) and report.created_total == len(flows)
    tcp = [x for x in report.top_talkers if x.l4_proto == 6]
    assert tcp and all(x.tcp_flags == 0x10 for x in tcp)  # ACK, OR-ed over the flow's life


@pytest.mark.parametrize("loader", LOADERS)
def test_a_table_smaller_than_the_traffic_reports_what_it_could_not_hold_as_lost(
    net: VethPair, pin_root: Path, loader: str
) -> None:
    n, capacity = 3000, 1024
    frames = [
        frame(IP(src=f"10.9.{i >> 8}.{i & 255}", dst="10.8.0.1") / UDP(sport=7, dport=9), 0, 0)
        for i in range(n)
    ]
    with running(net, pin_root / "p", loader, flow_capacity=capacity) as dp:
        t = tracker(dp)
        kernel = send_settled(net, frames)
        held = table_size(dp)
        report = t.read(names(dp))
        assert t.untracked() == 0
    assert kernel.rx_packets == n
    assert report.created_total == n
    assert report.active == held <= capacity
    assert report.lost_total == n - held
    assert sum(x.packets for x in report.top_talkers) == min(10, held)
    assert accounted(t, report) == 0


def _tcp(sport: int, flags: str) -> bytes:
    l3 = IP(src="10.6.0.1", dst="10.6.0.2") / TCP(sport=sport, dport=80, flags=flags)
    return frame(l3, 0, 0)


@pytest.mark.parametrize("loader", LOADERS)
def test_ended_and_idle_flows_are_removed_and_counted_once(
    net: VethPair, pin_root: Path, loader: str
) -> None:
    fin = [_tcp(100 + i, "A") for i in range(3)] + [_tcp(100 + i, "FA") for i in range(3)]
    rst = [_tcp(200 + i, "R") for i in range(2)]
    udp = [
        frame(IP(src="10.6.0.1", dst="10.6.0.3") / UDP(sport=i, dport=5), 0, 1)
        for i in (1, 2, 3, 4)
    ]
    with running(net, pin_root / "p", loader) as dp:
        t = tracker(dp, idle_s=1.0)
        send_settled(net, fin + rst + udp)
        first = t.read(names(dp))
        after_first = table_size(dp)
        time.sleep(1.2)  # the UDP flows are now idle past the timeout
        second = t.read(names(dp))
        after_second = table_size(dp)
        net.send_to_a([_tcp(100, "A")])  # a segment after the flow ended: a new flow
        settled(net.ns_a, net.if_a)
        third = t.read(names(dp))
        # An agent restart: a new reader on the same pinned maps continues the totals.
        restarted = tracker(dp, idle_s=1.0).read(names(dp))
    assert (first.active, first.ended_total, after_first) == (4, 5, 4)
    assert (second.active, second.ended_total, after_second) == (0, 9, 0)
    assert (third.active, third.ended_total, third.created_total) == (1, 9, 10)
    ended = {x.sport: x.tcp_flags for x in first.top_talkers if x.l4_proto == 6}
    assert ended == {100: 0x11, 101: 0x11, 102: 0x11, 200: 0x04, 201: 0x04}
    assert [accounted(t, r) for r in (first, second, third)] == [0, 0, 0]
    assert third.lost_total == third.evicted_total == 0
    assert (restarted.ended_total, restarted.created_total, restarted.active) == (9, 10, 1)


@pytest.mark.parametrize("loader", LOADERS)
def test_a_million_entry_table_loads_and_counts(net: VethPair, pin_root: Path, loader: str) -> None:
    with running(net, pin_root / "p", loader, flow_capacity=1_000_000) as dp:
        fd = dp.manager.loaded.map_fds[layout.MAP_FLOWS]  # type: ignore[union-attr]
        info = libbpf().map_info(fd)
        t = tracker(dp)
        frames = [f.frame for f in mixed_flows(2)]
        send_settled(net, frames)
        report = t.read(names(dp))
        bursts = libbpf().map_info(dp.manager.loaded.map_fds[layout.MAP_BURSTS])  # type: ignore[union-attr]
    assert (info.type, info.max_entries) == (layout.BPF_MAP_TYPE_LRU_HASH, 1_000_000)
    assert bursts.value_size == layout.BURST.itemsize  # the kernel's view of the layout
    assert (report.capacity, report.active, report.created_total) == (1_000_000, 6, 6)


@pytest.mark.parametrize("loader", LOADERS)
def test_a_real_tcp_transfer_is_two_flows_that_add_up_to_the_interface_counters(
    root: None, pin_root: Path, loader: str
) -> None:
    """A kernel TCP connection (GSO segments on the way out): the data flow leaving and the
    ACK flow arriving hold exactly what the interface itself sent and received, both saw
    the handshake and FIN, and both are removed as ended at the first read."""
    with veth_pair(mtu=1500) as net:
        set_features(net.ns_a, net.if_a, dict.fromkeys(TSO_FEATURES, False))
        _, b = address(net)
        with running(net, pin_root / "p", loader, large=1514) as dp:
            t = tracker(dp)
            before = link_stats(net.ns_a, net.if_a)
            tcp_bulk(net.ns_a, net.ns_b, b, 1 << 20, port=5001)
            kernel = settled(net.ns_a, net.if_a) - before
            report = t.read(names(dp))
    (data,) = [x for x in report.top_talkers if x.direction == "tx"]
    (acks,) = [x for x in report.top_talkers if x.direction == "rx"]
    assert (data.packets, data.bytes) == (kernel.tx_packets, kernel.tx_bytes)
    assert (acks.packets, acks.bytes) == (kernel.rx_packets, kernel.rx_bytes)
    assert (data.dport, acks.sport, data.sport) == (5001, 5001, acks.dport)
    assert data.tcp_flags & 0x13 == acks.tcp_flags & 0x13 == 0x13  # SYN, ACK and FIN
    assert (report.ended_total, report.active, report.created_total) == (2, 0, 2)
    assert kernel.tx_packets > (1 << 20) // 1500


def test_flow_layouts_match_the_c_header(tmp_path: Path) -> None:
    """FLOW_KEY, FLOW and the FLOW_STATS indexes against sennet_tc.h (a C probe)."""
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>"]
    lines += ['#include "sennet_tc.h"', "int main(void) {"]
    for struct_name, dtype in (
        ("sennet_flow_key", layout.FLOW_KEY),
        ("sennet_flow", layout.FLOW),
    ):
        lines.append(f'  printf("{struct_name}.size %zu\\n", sizeof(struct {struct_name}));')
        for name in dtype.names or ():
            off = f"offsetof(struct {struct_name}, {name})"
            lines.append(f'  printf("{struct_name}.{name} %zu\\n", {off});')
    for const in ("FLOW_STAT_CREATED", "FLOW_STAT_UNTRACKED", "FLOW_STATS"):
        lines.append(f'  printf("{const} %d\\n", SENNET_{const});')
    lines += ["  return 0;", "}"]
    src, exe = tmp_path / "probe.c", tmp_path / "probe"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run(["gcc", "-I", str(REPO / "bpf"), "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    c = {k: int(v) for k, v in (line.split() for line in out.splitlines())}
    for struct_name, dtype in (
        ("sennet_flow_key", layout.FLOW_KEY),
        ("sennet_flow", layout.FLOW),
    ):
        assert c[f"{struct_name}.size"] == dtype.itemsize
        for name in dtype.names or ():
            assert c[f"{struct_name}.{name}"] == dtype.fields[name][1], (struct_name, name)
    assert (c["FLOW_STAT_CREATED"], c["FLOW_STAT_UNTRACKED"], c["FLOW_STATS"]) == (
        layout.FLOW_STAT_CREATED,
        layout.FLOW_STAT_UNTRACKED,
        layout.FLOW_STATS,
    )


def test_a_walk_that_meets_more_flows_than_its_buffers_grows_them(
    net: VethPair, pin_root: Path
) -> None:
    """Under churn a walk can meet more flows than the table holds at once; the reader's
    compact buffers (sized to the table) then grow, and the deltas stay exact."""
    flows = mixed_flows()
    with running(net, pin_root / "p") as dp:
        t = tracker(dp, top_n=100)
        t._prev = _Compact.empty(1)
        send_settled(net, interleaved(flows))
        first = t.read(names(dp))
        send_settled(net, interleaved(flows))
        second = t.read(names(dp))
    expected = {f.fid: (f.count, f.bytes) for f in flows}
    for report in (first, second):
        assert {fid_of(x): (x.packets, x.bytes) for x in report.top_talkers} == expected
        assert report.active == len(flows)

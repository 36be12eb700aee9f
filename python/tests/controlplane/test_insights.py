"""Flows, microbursts, DNS and TCP health at the control plane: stored and exported exactly.

Heartbeats travel over real gRPC and Connect to the real control-plane process
with its SQLite file. The oracle is the snapshot the heartbeat was built from
(`sennet.testing.telemetry`: the numbers the test states), read back from the
database with plain SQL and from /metrics with the reference parser; every
sample of the new families is compared, so a missing or extra series fails too.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import grpc
import pytest

from sennet.agent.snapshot import Snapshot
from sennet.agent.telemetry import LatencyHistogram
from sennet.controlplane.fleet import AgentView, Fleet
from sennet.controlplane.fleet_insights import telemetry_of
from sennet.controlplane.metrics import Exposition, ServerMetrics
from sennet.controlplane.store import Store
from sennet.proto.contract import HEARTBEAT
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.controlplane import (
    ControlPlane,
    Served,
    create_bootstrap_token,
    heartbeat_request,
    running,
)
from sennet.testing.scrape import Labels, Samples, parse_samples, sample
from sennet.testing.telemetry import full_request, full_snapshot

OK = (grpc.StatusCode.OK, "")
PREFIXES = ("sennet_flow_", "sennet_dns_", "sennet_tcp_")


def send(cp: ControlPlane, transport: str, token: str, req: pb.HeartbeatRequest) -> tuple[str, str]:
    return cp.call(transport, HEARTBEAT.name, req, token)


def _histogram(
    out: dict[tuple[str, Labels], float], name: str, a: str, h: LatencyHistogram
) -> None:
    running_count = 0
    for bound, count in zip([*h.bounds_s, math.inf], h.counts, strict=True):
        running_count += count
        le = "+Inf" if bound == math.inf else repr(bound)
        out[(f"{name}_bucket", (("agent", a), ("le", le)))] = running_count
    out[(f"{name}_count", (("agent", a),))] = sum(h.counts)
    out[(f"{name}_sum", (("agent", a),))] = h.sum_s


def expected(a: str, snap: Snapshot) -> dict[tuple[str, Labels], float]:
    """Every sample the snapshot's reports must give in /metrics, written out from its fields."""
    assert snap.flows is not None and snap.dns is not None and snap.tcp is not None
    f, d, t = snap.flows, snap.dns, snap.tcp
    agent = (("agent", a),)
    out: dict[tuple[str, Labels], float] = {
        ("sennet_flow_active", agent): f.active,
        ("sennet_flow_capacity", agent): f.capacity,
        ("sennet_flow_created_total", agent): f.created_total,
        ("sennet_flow_ended_total", agent): f.ended_total,
        ("sennet_flow_lost_total", agent): f.lost_total,
        ("sennet_flow_evicted_total", agent): f.evicted_total,
        ("sennet_dns_unanswered_total", agent): d.unanswered_total,
        ("sennet_dns_malformed_total", agent): d.malformed_total,
        ("sennet_tcp_attempts_unanswered_total", agent): t.attempts_unanswered_total,
        ("sennet_tcp_retransmits_total", agent): t.retransmits_total,
        ("sennet_tcp_zero_windows_total", agent): t.zero_windows_total,
        ("sennet_tcp_malformed_total", agent): t.malformed_total,
    }
    for rank, tk in enumerate(f.top_talkers, start=1):
        labels = tuple(
            sorted(
                {
                    "agent": a,
                    "rank": str(rank),
                    "interface": tk.ifname,
                    "direction": tk.direction,
                    "proto": str(tk.l4_proto),
                    "src": tk.saddr,
                    "dst": tk.daddr,
                    "sport": str(tk.sport),
                    "dport": str(tk.dport),
                    "vlan": str(tk.vlan_id),
                }.items()
            )
        )
        out[("sennet_flow_top_talker_bytes", labels)] = tk.bytes
        out[("sennet_flow_top_talker_packets", labels)] = tk.packets
    for m in snap.microbursts:
        labels = tuple(
            sorted(
                {
                    "agent": a,
                    "interface": m.ifname,
                    "direction": m.direction,
                    "window": f"{m.window_ms}ms",
                }.items()
            )
        )
        out[("sennet_flow_microburst_max_packets", labels)] = m.max_packets
        out[("sennet_flow_microburst_max_bytes", labels)] = m.max_bytes
    for qtype, n in d.queries_by_type.items():
        out[("sennet_dns_queries_total", (("agent", a), ("type", qtype)))] = n
    for rcode, n in d.responses_by_rcode.items():
        out[("sennet_dns_responses_total", (("agent", a), ("rcode", rcode)))] = n
    for family, names in (
        ("sennet_dns_top_queried", d.top_queried),
        ("sennet_dns_top_failing", d.top_failing),
    ):
        for rank, nc in enumerate(names, start=1):
            out[(family, (("agent", a), ("qname", nc.name), ("rank", str(rank))))] = nc.count
    for direction, n in t.resets_by_direction.items():
        out[("sennet_tcp_resets_total", (("agent", a), ("direction", direction)))] = n
    _histogram(out, "sennet_dns_latency_seconds", a, d.latency)
    _histogram(out, "sennet_tcp_syn_rtt_seconds", a, t.syn_rtt)
    _histogram(out, "sennet_tcp_synack_rtt_seconds", a, t.synack_rtt)
    return out


def exported(s: Samples, a: str) -> dict[tuple[str, Labels], float]:
    """The new families' samples of agent `a`."""
    return {k: v for k, v in s.items() if k[0].startswith(PREFIXES) and ("agent", a) in k[1]}


def stored(cp: ControlPlane, agent_id: str) -> dict[str, list[tuple[object, ...]]]:
    """The new tables' rows of the agent's newest heartbeat, read with plain SQL."""
    (hb,) = cp.query("SELECT max(heartbeat_id) FROM heartbeats WHERE agent_id = ?", agent_id)[0]
    tables = {
        "flow_samples": "active, capacity, created_total, ended_total, lost_total, evicted_total",
        "talkers": "rank, interface, direction, ip_version, l4_proto, src_addr, dst_addr,"
        " src_port, dst_port, vlan_id, packets, bytes, tcp_flags",
        "microbursts": "interface, direction, window_ms, max_packets, max_bytes",
        "dns_samples": "unanswered_total, malformed_total",
        "dns_counts": "what, key, count",
        "dns_names": "list, rank, name, count",
        "tcp_samples": "attempts_unanswered_total, resets_rx, resets_tx, retransmits_total,"
        " zero_windows_total, malformed_total",
        "histogram_samples": "histogram, bounds_seconds, counts, sum_seconds",
    }
    return {
        table: sorted(cp.query(f"SELECT {cols} FROM {table} WHERE heartbeat_id = ?", hb))
        for table, cols in tables.items()
    }


def _hist_row(name: str, h: LatencyHistogram) -> tuple[object, ...]:
    return (name, list(h.bounds_s), list(h.counts), h.sum_s)


@pytest.mark.parametrize("transport", ["grpc", "connect"])
def test_a_heartbeat_with_every_part_is_stored_exactly(shared: Served, transport: str) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)
    assert send(shared.cp, transport, token, full_request(agent_id)) == ("ok", "")
    rows = stored(shared.cp, agent_id)
    hists = rows.pop("histogram_samples")
    snap = full_snapshot()
    assert snap.dns is not None and snap.tcp is not None
    assert [(n, json.loads(str(b)), json.loads(str(c)), s) for n, b, c, s in hists] == [
        _hist_row("dns_latency", snap.dns.latency),
        _hist_row("tcp_syn_rtt", snap.tcp.syn_rtt),
        _hist_row("tcp_synack_rtt", snap.tcp.synack_rtt),
    ]
    assert rows == {
        "flow_samples": [(37, 65536, 1000, 900, 63, 29)],
        "talkers": [
            (1, "eth1", "rx", 4, 6, "10.0.0.1", "10.0.0.2", 40000, 443, 0, 120, 150_000, 0x1B),
            (2, "eth1", "tx", 6, 17, "fd00::1", "fd00::53", 5353, 53, 42, 9, 1_206, 0),
            (3, "eth2", "rx", 4, 1, "192.0.2.7", "192.0.2.9", 0, 0, 0, 3, 294, 0),
        ],
        "microbursts": [
            ("eth1", "rx", 1, 17, 25_500),
            ("eth1", "rx", 10, 90, 134_000),
            ("eth1", "tx", 1, 4, 600),
            ("eth1", "tx", 10, 12, 1_800),
        ],
        "dns_samples": [(4, 6)],
        "dns_counts": [
            ("qtype", "A", 40),
            ("qtype", "AAAA", 30),
            ("qtype", "other", 2),
            ("rcode", "NOERROR", 60),
            ("rcode", "NXDOMAIN", 5),
            ("rcode", "REFUSED", 1),
            ("rcode", "SERVFAIL", 3),
            ("rcode", "other", 0),
        ],
        "dns_names": [
            ("failing", 1, "missing.example", 5),
            ("failing", 2, ".", 1),
            ("queried", 1, "example.com", 25),
            ("queried", 2, 'we"ird\\name.test', 9),
        ],
        "tcp_samples": [(8, 3, 2, 14, 1, 0)],
    }


@pytest.mark.parametrize("transport", ["grpc", "connect"])
def test_every_part_is_exported_exactly_in_metrics(shared: Served, transport: str) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)
    assert send(shared.cp, transport, token, full_request(agent_id)) == ("ok", "")
    want = expected(agent_id, full_snapshot())
    assert len(want) == 12 + 6 + 8 + 3 + 5 + 4 + 2 + 3 * 30
    assert exported(shared.cp.samples(), agent_id) == want


def test_counters_that_go_backwards_are_resets_and_totals_stay_monotonic(shared: Served) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)
    # scale 3, then the agent restarts without its pinned maps and reports scale 1, then 2
    for scale in (3, 1, 2):
        assert shared.cp.heartbeat(token, full_request(agent_id, scale)) == OK
    s = shared.cp.samples()
    a = agent_id
    assert sample(s, "sennet_flow_created_total", agent=a) == 3000 + 1000 + 1000
    assert sample(s, "sennet_flow_lost_total", agent=a) == 189 + 63 + 63
    assert sample(s, "sennet_flow_evicted_total", agent=a) == 87 + 29 + 29
    assert sample(s, "sennet_dns_queries_total", agent=a, type="A") == 120 + 40 + 40
    assert sample(s, "sennet_tcp_resets_total", agent=a, direction="rx") == 9 + 3 + 3
    # the DNS histogram's buckets reset one by one (per-bucket counts of histogram(scale)):
    # bucket 11 held 9 (scale 3) then 3 (scale 1, a reset: +3) then 6 (+3); bucket 9 held 0,
    # then 3 (+3), then 0 (a reset to 0: +0); ...; the cumulative export stays consistent
    count = sample(s, "sennet_dns_latency_seconds_count", agent=a)
    inf = sample(s, "sennet_dns_latency_seconds_bucket", agent=a, le="+Inf")
    per_scale = {1: {9: 3, 13: 2, 27: 1}, 2: {10: 6, 14: 3, 27: 1}, 3: {11: 9, 15: 4, 27: 1}}
    totals: dict[int, int] = {}
    last: dict[int, int] = {}
    for scale in (3, 1, 2):
        for bucket in range(28):
            raw = per_scale[scale].get(bucket, 0)
            prev = last.get(bucket)
            if prev is None:
                totals[bucket] = raw
            elif raw >= prev:
                totals[bucket] += raw - prev
            else:
                totals[bucket] += raw
            last[bucket] = raw
    assert count == inf == sum(totals.values())
    assert sample(s, "sennet_dns_latency_seconds_sum", agent=a) == pytest.approx(
        (123_456_789 * 3 + 7 + 123_456_789 + 7 + 123_456_789 + 0) / 1e9, abs=1e-12
    )
    assert sample(s, "sennet_agent_series_resets_total", agent=a) is not None


def _bad(agent_id: str) -> list[tuple[pb.HeartbeatRequest, str]]:
    """Heartbeats with one bad new part each, and the field the refusal must name."""
    cases: list[tuple[pb.HeartbeatRequest, str]] = []

    def case(field: str) -> pb.HeartbeatRequest:
        req = full_request(agent_id)
        cases.append((req, field))
        return req

    case("flows.top_talkers: has 4 entries, at most 3 allowed (max_talkers)").flows.top_talkers.add(
        interface="eth1",
        direction=pb.DIRECTION_RX,
        ip_version=4,
        src_addr="1.1.1.1",
        dst_addr="2.2.2.2",
    )
    case("dns.top_queried: has 3 entries").dns.top_queried.add(name="x.test", count=1)
    case("dns.top_failing[0].name: is 256 characters").dns.top_failing[0].name = "a" * 256
    case("dns.latency.counts: has 27 entries for 27 bounds").dns.latency.counts.pop()
    req = case("tcp.syn_rtt.bounds_seconds[5]")
    req.tcp.syn_rtt.bounds_seconds[5] = req.tcp.syn_rtt.bounds_seconds[4]
    case("tcp.synack_rtt.sum_seconds: -1.0").tcp.synack_rtt.sum_seconds = -1.0
    case("dns.latency.sum_seconds: nan").dns.latency.sum_seconds = math.nan
    case("dns.responses_by_rcode['BADRCODE']").dns.responses_by_rcode["BADRCODE"] = 1
    case("microbursts[0].window_ms: 5 is not 1 or 10").microbursts[0].window_ms = 5
    case("flows.top_talkers[1].src_addr").flows.top_talkers[1].src_addr = "10.0.0.1"
    case("tcp.resets_by_direction['up']").tcp.resets_by_direction["up"] = 1
    case("flows.lost_total: 9223372036854775808 exceeds").flows.lost_total = 1 << 63
    case("flows.evicted_total: 9223372036854775808 exceeds").flows.evicted_total = 1 << 63
    return cases


def test_bad_parts_are_refused_naming_the_field_and_other_heartbeats_are_unaffected(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--max-talkers", "3", "--max-dns-names", "2"]) as cp:
        bad_id, bad_token = cp.register(bootstrap)
        good_id, good_token = cp.register(bootstrap)
        assert cp.heartbeat(bad_token, full_request(bad_id)) == OK  # at the caps: accepted
        before = exported(cp.samples(), bad_id)
        heartbeats = cp.scalar("SELECT count(*) FROM heartbeats")
        refused = 0
        for req, field in _bad(bad_id):
            for transport in ("grpc", "connect"):
                code, message = send(cp, transport, bad_token, req)
                assert code == "invalid_argument" and message.startswith(field), (
                    transport,
                    field,
                    message,
                )
                refused += 1
            # a well-formed heartbeat of another agent, between the refusals, goes through
            assert cp.heartbeat(good_token, full_request(good_id)) == OK
        assert cp.scalar("SELECT count(*) FROM heartbeats") == heartbeats + len(_bad(bad_id))
        s = cp.samples()
        assert exported(s, bad_id) == before == expected(bad_id, full_snapshot())
        assert exported(s, good_id) == expected(good_id, full_snapshot())
        assert cp.rejected("Heartbeat", "invalid_argument", "invalid_argument") == refused
        cp.stop()


def test_the_latest_gauges_and_the_totals_survive_a_control_plane_restart(fresh: Served) -> None:
    agent_id, token = fresh.cp.register(fresh.bootstrap)
    assert fresh.cp.heartbeat(token, full_request(agent_id)) == OK
    before = exported(fresh.cp.samples(), agent_id)
    fresh.cp.restart()
    assert exported(fresh.cp.samples(), agent_id) == before == expected(agent_id, full_snapshot())
    # both reload paths (the whole fleet at start, one agent in the writer) read the same
    store = Store(fresh.cp.db)
    conn = store.connect()
    try:
        one = store.load_agent(conn, agent_id)
        (whole,) = [v for v in store.load_fleet() if v.agent_id == agent_id]
        assert one is not None
        assert one.telemetry == whole.telemetry == telemetry_of(full_request(agent_id))
    finally:
        conn.close()
        store.close()


def test_promtool_accepts_the_exposition_with_every_part(shared: Served) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)
    assert shared.cp.heartbeat(token, full_request(agent_id)) == OK
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=shared.cp.metrics_text(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_fast_renderer_gives_exactly_the_reference_samples_for_every_part() -> None:
    views = []
    for n in range(30):
        aid = f"00000000-0000-0000-0000-{n:012d}"
        view, _ = AgentView(aid).apply(full_request(aid, 1 + n % 3), 1_700_000_000.0 + n)
        if n % 2:  # a later heartbeat: totals move, the gauges are replaced
            view, _ = view.apply(full_request(aid, 2 + n % 3), 1_700_000_010.0 + n)
        views.append(view)
    views.append(AgentView(str(999)))  # enrolled, never reported
    old, _ = AgentView("old-agent").apply(heartbeat_request("old-agent", rx=(1, 60)), 1.0)
    views.append(old)  # an agent without the new parts
    fleet = Fleet(views)
    expo = Exposition(ServerMetrics(agents=lambda: len(fleet)), fleet, stale_after_s=1e12)
    fast = parse_samples(expo.render(fast=True).decode())
    plain = parse_samples(expo.render(fast=False).decode())
    assert fast == plain
    assert len(exported(fast, views[0].agent_id)) == 12 + 6 + 8 + 3 + 5 + 4 + 2 + 3 * 30
    assert exported(fast, "old-agent") == {}
    # next heartbeats, published after that scrape: the same keys (the prepared layout is
    # reused), then a new DNS type and talker list (the layout and the gauges change)
    for step in (1, 2):
        later = {}
        for v in views[:10]:
            req = full_request(v.agent_id, 5 + step)
            if step == 2:
                req.dns.queries_by_type["MX"] = 3
                del req.flows.top_talkers[1:]
            later[v.agent_id] = v.apply(req, 1_800_000_000.0 + step)[0]
        fleet.publish(later)
        views = [later.get(v.agent_id, v) for v in views]
        fast = parse_samples(expo.render(fast=True).decode())
        assert fast == parse_samples(expo.render(fast=False).decode())
        a = views[0].agent_id
        assert sample(fast, "sennet_flow_created_total", agent=a) == 1000 * (5 + step)
    assert sample(fast, "sennet_dns_queries_total", agent=a, type="MX") == 3
    assert (
        len([k for k in fast if k[0] == "sennet_flow_top_talker_bytes" and ("agent", a) in k[1]])
        == 1
    )


def test_a_histogram_export_step_exports_exact_counts_at_every_third_bound(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--histogram-export-step", "3"]) as cp:
        agent_id, token = cp.register(bootstrap)
        assert cp.heartbeat(token, full_request(agent_id)) == OK
        kept = {repr((1 << i) / 1e6) for i in range(2, 27, 3)} | {"+Inf"}
        assert len(kept) == 10
        want = {
            key: value
            for key, value in expected(agent_id, full_snapshot()).items()
            if not key[0].endswith("_bucket") or dict(key[1])["le"] in kept
        }
        assert len(want) == 12 + 6 + 8 + 3 + 5 + 4 + 2 + 3 * 12
        assert exported(cp.samples(), agent_id) == want
        cp.stop()
    fleet = Fleet([AgentView("a").apply(full_request("a"), 1.0)[0]])
    expo = Exposition(ServerMetrics(agents=lambda: 1), fleet, 1e12, histogram_step=3)
    fast = parse_samples(expo.render(fast=True).decode())
    assert fast == parse_samples(expo.render(fast=False).decode())
    assert len(exported(fast, "a")) == len(want)

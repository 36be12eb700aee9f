"""The agent's own /metrics exports flows, microbursts, DNS and TCP exactly, promtool-clean."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from sennet.agent import readout
from sennet.agent.snapshot import Snapshot
from sennet.testing.scrape import Samples, fetch, matching, parse_samples, sample
from sennet.testing.telemetry import full_snapshot


@pytest.fixture
def served() -> Iterator[tuple[str, list[Snapshot]]]:
    """The real HTTP endpoint on a free loopback port, serving whatever snapshot is current."""
    current = [full_snapshot()]
    server, thread = readout.serve("127.0.0.1:0", lambda: current[0], "agent-1")
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics", current
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _histogram(s: Samples, name: str, seed: int) -> None:
    """Cumulative `le` buckets, _sum and _count, checked against the per-bucket input."""
    per_bucket = [0] * 28
    per_bucket[seed % 5 + 8] = 3 * seed
    per_bucket[seed % 5 + 12] = seed + 1
    per_bucket[27] = 1
    buckets = {dict(lab)["le"]: v for lab, v in matching(s, f"{name}_bucket").items()}
    assert len(buckets) == 28
    running = 0
    for i in range(27):
        running += per_bucket[i]
        assert buckets[repr((1 << i) / 1e6)] == running, i
    assert buckets["+Inf"] == sum(per_bucket) == 4 * seed + 2
    assert sample(s, f"{name}_count") == 4 * seed + 2
    assert sample(s, f"{name}_sum") == (123_456_789 * seed + 7) / 1e9


def test_every_report_is_exported_with_its_exact_value(
    served: tuple[str, list[Snapshot]],
) -> None:
    s = parse_samples(fetch(served[0]))
    assert sample(s, "sennet_agent_flow_active") == 37
    assert sample(s, "sennet_agent_flow_capacity") == 65536
    assert sample(s, "sennet_agent_flow_created_total") == 1000
    assert sample(s, "sennet_agent_flow_ended_total") == 900
    assert sample(s, "sennet_agent_flow_lost_total") == 63
    assert sample(s, "sennet_agent_flow_evicted_total") == 29
    first = dict(
        rank="1",
        interface="eth1",
        direction="rx",
        proto="6",
        src="10.0.0.1",
        dst="10.0.0.2",
        sport="40000",
        dport="443",
        vlan="0",
    )
    assert sample(s, "sennet_agent_flow_top_talker_bytes", **first) == 150_000
    assert sample(s, "sennet_agent_flow_top_talker_packets", **first) == 120
    second = dict(
        rank="2",
        interface="eth1",
        direction="tx",
        proto="17",
        src="fd00::1",
        dst="fd00::53",
        sport="5353",
        dport="53",
        vlan="42",
    )
    assert sample(s, "sennet_agent_flow_top_talker_bytes", **second) == 1_206
    assert sample(s, "sennet_agent_flow_top_talker_packets", **second) == 9
    assert len(matching(s, "sennet_agent_flow_top_talker_bytes")) == 3
    for direction, window, packets, octets in (
        ("rx", "1ms", 17, 25_500),
        ("rx", "10ms", 90, 134_000),
        ("tx", "1ms", 4, 600),
        ("tx", "10ms", 12, 1_800),
    ):
        labels = dict(interface="eth1", direction=direction, window=window)
        assert sample(s, "sennet_agent_flow_microburst_max_packets", **labels) == packets
        assert sample(s, "sennet_agent_flow_microburst_max_bytes", **labels) == octets
    assert {
        dict(k)["type"]: v for k, v in matching(s, "sennet_agent_dns_queries_total").items()
    } == {
        "A": 40,
        "AAAA": 30,
        "other": 2,
    }
    assert {
        dict(k)["rcode"]: v for k, v in matching(s, "sennet_agent_dns_responses_total").items()
    } == {"NOERROR": 60, "NXDOMAIN": 5, "SERVFAIL": 3, "REFUSED": 1, "other": 0}
    assert sample(s, "sennet_agent_dns_unanswered_total") == 4
    assert sample(s, "sennet_agent_dns_malformed_total") == 6
    assert sample(s, "sennet_agent_dns_top_queried", rank="1", qname="example.com") == 25
    assert sample(s, "sennet_agent_dns_top_queried", rank="2", qname='we"ird\\name.test') == 9
    assert sample(s, "sennet_agent_dns_top_failing", rank="1", qname="missing.example") == 5
    assert sample(s, "sennet_agent_dns_top_failing", rank="2", qname=".") == 1
    _histogram(s, "sennet_agent_dns_latency_seconds", 1)
    _histogram(s, "sennet_agent_tcp_syn_rtt_seconds", 2)
    _histogram(s, "sennet_agent_tcp_synack_rtt_seconds", 3)
    assert sample(s, "sennet_agent_tcp_attempts_unanswered_total") == 8
    assert sample(s, "sennet_agent_tcp_resets_total", direction="rx") == 3
    assert sample(s, "sennet_agent_tcp_resets_total", direction="tx") == 2
    assert sample(s, "sennet_agent_tcp_retransmits_total") == 14
    assert sample(s, "sennet_agent_tcp_zero_windows_total") == 1
    assert sample(s, "sennet_agent_tcp_malformed_total") == 0


def test_top_talker_series_stay_bounded_by_n_as_the_talkers_change(
    served: tuple[str, list[Snapshot]],
) -> None:
    url, current = served
    base = full_snapshot()
    assert base.flows is not None
    seen: set[object] = set()
    for round_ in range(20):  # 20 intervals, each with new talkers (new tuples)
        talkers = tuple(
            type(t)(**{**t.__dict__, "sport": 1000 + round_ * 10 + i})
            for i, t in enumerate(base.flows.top_talkers)
        )
        current[0] = type(base)(
            **{
                **base.__dict__,
                "flows": type(base.flows)(**{**base.flows.__dict__, "top_talkers": talkers}),
            }
        )
        s = parse_samples(fetch(url))
        series = matching(s, "sennet_agent_flow_top_talker_bytes")
        assert len(series) == 3  # one scrape never holds more than N
        assert {dict(k)["rank"] for k in series} == {"1", "2", "3"}
        seen |= set(series)
    assert len(seen) == 60  # each scrape showed the interval's own talkers


def test_promtool_accepts_the_agent_exposition(served: tuple[str, list[Snapshot]]) -> None:
    text = fetch(served[0])
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")

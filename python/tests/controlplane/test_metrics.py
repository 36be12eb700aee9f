"""/metrics: exact per-agent values, counter resets, liveness, exposition validity."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import grpc
from google.protobuf import json_format

from sennet.common.retry import retry
from sennet.controlplane.fleet import AgentView, Fleet, Series, SeriesKey, advance
from sennet.controlplane.metrics import Exposition, ServerMetrics
from sennet.proto.contract import HEARTBEAT
from sennet.testing.controlplane import Served, create_bootstrap_token, heartbeat_request, running
from sennet.testing.scrape import parse_samples, sample

OK = (grpc.StatusCode.OK, "")


def test_advance_keeps_a_monotonic_total_across_resets() -> None:
    s, reset = advance(None, 100)
    assert (s, reset) == (Series(100, 100), False)
    s, reset = advance(s, 130)
    assert (s, reset) == (Series(130, 130), False)
    s, reset = advance(s, 20)  # restarted from zero, counted 20 since
    assert (s, reset) == (Series(20, 150), True)
    s, reset = advance(s, 20)
    assert (s, reset) == (Series(20, 150), False)


def test_exported_counters_are_the_agents_counters_with_exact_values(shared: Served) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap, hostname="edge-1")
    req = heartbeat_request(
        agent_id,
        rx=(5, 300),
        tx=(2, 140),
        uptime=12.5,
        events={"large_packet": 3, "tcp_xmas": 1},
        drops={"large_packet": 2},
        agent_dropped=4,
    )
    assert shared.cp.heartbeat(token, req) == OK
    s = shared.cp.samples()
    a = agent_id
    assert (
        sample(s, "sennet_interface_packets_total", agent=a, interface="eth1", direction="rx") == 5
    )
    assert (
        sample(s, "sennet_interface_bytes_total", agent=a, interface="eth1", direction="rx") == 300
    )
    assert (
        sample(s, "sennet_interface_packets_total", agent=a, interface="eth1", direction="tx") == 2
    )
    assert (
        sample(s, "sennet_interface_bytes_total", agent=a, interface="eth1", direction="tx") == 140
    )
    assert sample(s, "sennet_events_total", agent=a, kind="large_packet") == 3
    assert sample(s, "sennet_events_total", agent=a, kind="tcp_xmas") == 1
    assert sample(s, "sennet_ringbuf_drops_total", agent=a, kind="large_packet") == 2
    assert sample(s, "sennet_agent_events_dropped_total", agent=a) == 4
    assert sample(s, "sennet_agent_uptime_seconds", agent=a) == 12.5
    assert sample(s, "sennet_agent_up", agent=a) == 1
    assert (
        sample(
            s,
            "sennet_agent_info",
            agent=a,
            hostname="edge-1",
            agent_version="0.1.0",
            kernel_version="6.18.0",
        )
        == 1
    )
    last = sample(s, "sennet_agent_last_heartbeat_timestamp_seconds", agent=a)
    assert last is not None and abs(time.time() - last) < 10


def test_counters_going_backwards_stay_monotonic_and_count_the_reset(shared: Served) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)
    for rx in [(100, 6000), (30, 1800), (50, 3000)]:  # the agent lost its maps after the first
        assert shared.cp.heartbeat(token, heartbeat_request(agent_id, rx=rx)) == OK
    s = shared.cp.samples()
    labels = {"agent": agent_id, "interface": "eth1", "direction": "rx"}
    assert sample(s, "sennet_interface_packets_total", **labels) == 100 + 30 + 20
    assert sample(s, "sennet_interface_bytes_total", **labels) == 6000 + 1800 + 1200
    # rx packets and rx bytes went backwards in the same heartbeat: two series, two resets
    assert sample(s, "sennet_agent_series_resets_total", agent=agent_id) == 2


def test_accepted_heartbeats_and_latency_are_counted(fresh: Served) -> None:
    agent_id, token = fresh.cp.register(fresh.bootstrap)
    for n in range(3):
        assert fresh.cp.heartbeat(token, heartbeat_request(agent_id, rx=(n, n))) == OK
    s = fresh.cp.samples()
    assert sample(s, "sennet_controlplane_heartbeats_accepted_total", transport="grpc") == 3
    assert sample(s, "sennet_controlplane_registrations_total", transport="grpc") == 1
    assert (
        sample(
            s,
            "sennet_controlplane_rpc_duration_seconds_count",
            method="Heartbeat",
            transport="grpc",
        )
        == 3
    )
    assert sample(s, "sennet_controlplane_agents") == 1


def test_an_agent_is_down_once_its_heartbeats_are_stale(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--stale-after", "0.5"]) as cp:
        agent_id, token = cp.register(bootstrap)
        assert cp.heartbeat(token, heartbeat_request(agent_id)) == OK
        assert sample(cp.samples(), "sennet_agent_up", agent=agent_id) == 1

        def down(last: bool) -> bool | None:
            return True if sample(cp.samples(), "sennet_agent_up", agent=agent_id) == 0 else None

        retry(down, 5.0, interval=0.1, what="sennet_agent_up == 0")
        cp.stop()


def test_promtool_accepts_the_exposition(shared: Served) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap, hostname='odd "host" \\ name')
    assert (
        shared.cp.heartbeat(
            token, heartbeat_request(agent_id, rx=(1, 64), events={"large_packet": 1})
        )
        == OK
    )
    text = shared.cp.metrics_text()
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def _view(n: int) -> AgentView:
    aid = str(uuid.UUID(int=n))
    series = {}
    for ifname in ("eth0", "eth1"):
        for f in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"):
            series[SeriesKey(f, ifname)] = Series(n * 7, n * 11)
    for kind in ("large_packet", "tcp_xmas"):
        series[SeriesKey("events", kind)] = Series(n, n + 1)
        series[SeriesKey("ringbuf_drops", kind)] = Series(0, n % 3)
    series[SeriesKey("agent_dropped", "")] = Series(0, 2)
    return AgentView(
        agent_id=aid,
        hostname=f'h"{n}\\\n',
        agent_version="0.1.0",
        kernel_version="6.18",
        last_heartbeat=1_700_000_000.25 + n,
        uptime_seconds=n + 0.5,
        heartbeats=1,
        resets=n % 2,
        series=series,
    )


def test_the_fast_renderer_gives_exactly_the_samples_of_the_prometheus_client_path() -> None:
    fleet = Fleet([_view(n) for n in range(50)] + [AgentView(agent_id=str(uuid.UUID(int=999)))])
    expo = Exposition(ServerMetrics(agents=lambda: len(fleet)), fleet, stale_after_s=1e12)
    fast = parse_samples(expo.render(fast=True).decode())
    plain = parse_samples(expo.render(fast=False).decode())
    assert fast == plain
    assert len(fast) > 50 * 20
    # a second render uses the cached prefixes and must not change anything
    assert parse_samples(expo.render(fast=True).decode()) == fast


def test_fast_rendering_reflects_new_values_and_new_interfaces() -> None:
    fleet = Fleet([_view(1)])
    expo = Exposition(ServerMetrics(agents=lambda: 1), fleet, stale_after_s=1e12)
    expo.render(fast=True)
    req = heartbeat_request(str(uuid.UUID(int=1)), rx=(1000, 9000), ifname="eth9")
    view, _ = _view(1).apply(req, 1_800_000_000.0)
    fleet.publish({view.agent_id: view})
    fast = parse_samples(expo.render(fast=True).decode())
    assert fast == parse_samples(expo.render(fast=False).decode())
    assert (
        sample(
            fast,
            "sennet_interface_packets_total",
            agent=view.agent_id,
            interface="eth9",
            direction="rx",
        )
        == 1000
    )


def test_a_json_heartbeat_over_connect_lands_in_metrics(shared: Served) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)
    body = (
        f'{{"agentId": "{agent_id}", "uptimeSeconds": 3, "interfaces": [{{"name": "eth0", '
        f'"ifindex": 2, "rxPackets": "10", "rxBytes": "1000"}}], '
        f'"eventsByKind": {{"large_packet": "3"}}}}'
    ).encode()
    status, reply = shared.cp.connect(HEARTBEAT.name, body, token)
    assert status == 200 and set(reply) == {"serverTimeUnixNs"}  # proto3 JSON omits zeros
    assert abs(int(reply["serverTimeUnixNs"]) / 1e9 - time.time()) < 10
    s = shared.cp.samples()
    assert (
        sample(s, "sennet_interface_bytes_total", agent=agent_id, interface="eth0", direction="rx")
        == 1000
    )
    assert sample(s, "sennet_events_total", agent=agent_id, kind="large_packet") == 3


def test_both_transports_record_acceptance_refusal_and_latency_the_same_way(
    fresh: Served,
) -> None:
    agent_id, token = fresh.cp.register(fresh.bootstrap)
    req = heartbeat_request(agent_id, rx=(1, 60))
    assert fresh.cp.heartbeat(token, req) == OK
    assert (
        fresh.cp.connect(HEARTBEAT.name, json_format.MessageToJson(req).encode(), token)[0] == 200
    )
    assert fresh.cp.heartbeat("hunter2", req)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert fresh.cp.connect(HEARTBEAT.name, b"{}", "hunter2")[0] == 401
    s = fresh.cp.samples()
    for transport in ("grpc", "connect"):
        assert sample(s, "sennet_controlplane_heartbeats_accepted_total", transport=transport) == 1
        assert (
            sample(
                s,
                "sennet_controlplane_rpc_duration_seconds_count",
                method="Heartbeat",
                transport=transport,
            )
            == 2  # the accepted call and the refused one are both timed
        )
    refused = sample(
        s,
        "sennet_controlplane_requests_rejected_total",
        method="Heartbeat",
        code="unauthenticated",
        reason="malformed_token",
    )
    assert refused == 2

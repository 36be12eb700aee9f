"""The agent's control-plane sink against a real control plane: enrolment, outages, TLS."""

from __future__ import annotations

import json
import logging
import random
import signal
import sqlite3
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from sennet.agent.datapath.layout import Direction, EventKind
from sennet.agent.sinks.controlplane_grpc import GrpcSink, SinkOptions, backoff_delay, make_sink
from sennet.agent.sinks.heartbeat_message import event_to_proto
from sennet.agent.snapshot import Event, InterfaceCounters, Snapshot
from sennet.testing.controlplane import Served, cli, create_bootstrap_token, running
from sennet.testing.pki import make_pki
from sennet.testing.ports import free_port
from sennet.testing.scrape import sample

FAST = SinkOptions(rpc_deadline_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.3)


def snap(rx: int, *, events: int = 0, dropped: int = 0, uptime: float = 1.0) -> Snapshot:
    evs = tuple(
        Event(
            ts_ns=time.monotonic_ns(),
            ifindex=7,
            direction=Direction.RX,
            kind=EventKind.LARGE_PACKET,
            pkt_len=1500 + n,
            ip_version=4,
            l4_proto=17,
            sport=1000 + n,
            dport=53,
            eth_proto=0x0800,
            tcp_flags=0,
            vlan_tags=0,
            saddr="10.1.0.1",
            daddr="10.1.0.2",
        )
        for n in range(events)
    )
    return Snapshot(
        agent_version="0.1.0",
        kernel_version="6.18.0",
        uptime_s=uptime,
        loader="libbpf",
        interfaces=(InterfaceCounters("veth-m", 7, rx, rx * 100, 0, 0),),
        events_by_kind={"large_packet": rx},
        ringbuf_drops_by_kind={"large_packet": 0},
        events_consumed=0,
        recent_events=evs,
        recent_events_dropped=dropped,
    )


def rx_packets(samples: dict, agent_id: str) -> float | None:  # type: ignore[type-arg]
    return sample(
        samples,
        "sennet_interface_packets_total",
        agent=agent_id,
        interface="veth-m",
        direction="rx",
    )


def stored(db: Path, table: str, agent_id: str) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute(
            f"SELECT count(*) FROM {table} WHERE agent_id = ?", (agent_id,)
        ).fetchone()
    return int(n)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    opts = SinkOptions(backoff_initial_s=1.0, backoff_max_s=60.0)
    rng = random.Random(7)
    caps = [1, 2, 4, 8, 16, 32, 60, 60]
    delays = [backoff_delay(n, opts, rng) for n in range(1, 9)]
    for cap, delay in zip(caps, delays, strict=True):
        assert cap / 2 <= delay <= cap
    assert len({round(d / c, 6) for d, c in zip(delays, caps, strict=True)}) == len(caps)


def test_the_sink_enrols_keeps_its_token_0600_and_delivers_exact_counters(
    shared: Served, tmp_path: Path
) -> None:
    agent_id = str(uuid.uuid4())
    sink = make_sink(shared.cp.target, shared.bootstrap, tmp_path, agent_id, None, None)
    try:
        sink.send(snap(42, events=2))
        assert isinstance(sink, GrpcSink) and sink.flush(10)
        token_file = tmp_path / "agent-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        saved = json.loads(token_file.read_text())
        assert saved["agent_id"] == agent_id and saved["token"].startswith("sa.")
        assert saved["control_plane"] == shared.cp.target
        s = shared.cp.samples()
        assert rx_packets(s, agent_id) == 42
        assert sample(s, "sennet_events_total", agent=agent_id, kind="large_packet") == 42
        assert stored(shared.cp.db, "events", agent_id) == 2
        assert sink.stats().enrolments == 1 and sink.stats().events_queued == 0
    finally:
        sink.close()
    again = make_sink(shared.cp.target, shared.bootstrap, tmp_path, agent_id, None, None)
    try:  # a restarted agent reuses its token instead of enrolling again
        again.send(snap(43))
        assert isinstance(again, GrpcSink) and again.flush(10)
        assert again.stats().enrolments == 0
        assert rx_packets(shared.cp.samples(), agent_id) == 43
    finally:
        again.close()


def test_a_sink_whose_token_is_revoked_waits_for_an_operator_reset_then_enrols_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 11 changed this: a bootstrap token no longer re-enrols an existing agent id by
    # itself (anyone with it could take the agent over), so after `token revoke` the sink is
    # refused until the operator runs `agent reset`; it says so once and keeps counting.
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    agent_id = str(uuid.uuid4())
    caplog.set_level(logging.INFO, logger="sennet.agent.sinks.controlplane_grpc")
    # No token cache: the revocation from the command line applies to the very next call.
    with running(db, tmp_path, ["--agent-token-cache", "0"]) as cp:
        sink = GrpcSink(cp.target, bootstrap, tmp_path / "state", agent_id, options=FAST)
        try:
            sink.send(snap(1))
            assert sink.flush(10)
            old = json.loads((tmp_path / "state" / "agent-token").read_text())["token"]
            assert cli(db, "token", "revoke", old.split(".")[1]).returncode == 0
            sink.send(snap(2))
            sink.send(snap(3))  # it keeps counting while refused
            cp.wait_until("three refused enrolments", lambda: sink.stats().enrolments_refused >= 3)
            started, refused = time.monotonic(), sink.stats().enrolments_refused
            assert not sink.flush(1.0)  # backing off, not spinning (FAST caps at 0.3 s)
            rate = (sink.stats().enrolments_refused - refused) / (time.monotonic() - started)
            assert rate < 15, rate
            said = [r for r in caplog.records if r.getMessage() == "enrolment_refused"]
            assert len(said) == 1 and said[0].levelno == logging.ERROR
            assert "agent_already_enrolled" in cp.log()
            assert sink.stats().enrolments == 1
            assert rx_packets(cp.samples(), agent_id) == 1
            assert cli(db, "agent", "reset", agent_id).returncode == 0
            assert sink.flush(10), sink.stats()
            assert sink.stats().enrolments == 2
            assert json.loads((tmp_path / "state" / "agent-token").read_text())["token"] != old
            assert rx_packets(cp.samples(), agent_id) == 3
            assert old not in caplog.text and bootstrap not in caplog.text
        finally:
            sink.close()
        assert cp.stop() == 0, cp.log()


def test_send_never_blocks_while_the_control_plane_is_unreachable(tmp_path: Path) -> None:
    port = free_port()  # a port nobody listens on
    sink = GrpcSink(
        f"127.0.0.1:{port}",
        "sb.0000000000000000." + "x" * 43,
        tmp_path,
        str(uuid.uuid4()),
        options=FAST,
    )
    attempts: list[str] = []  # the thread each delivery attempt ran on
    real_attempt = sink._attempt

    def observed(*args: Any, **kwargs: Any) -> Any:
        attempts.append(threading.current_thread().name)
        return real_attempt(*args, **kwargs)

    sink._attempt = observed  # type: ignore[method-assign]
    try:
        for n in range(20):
            sink.send(snap(n, events=3))
            time.sleep(0.02)
        assert not sink.flush(0.3)
        stats = sink.stats()
        assert stats.failures >= 2 and stats.heartbeats_acked == 0
        # send() only queues: every attempt against the closed port ran on the sink's own
        # thread, so the agent's loop never waits for an unreachable control plane
        assert len(attempts) >= 2 and set(attempts) == {"sennet-grpc-sink"}
        assert stats.events_queued == 60
        assert stats.last_error is not None and stats.last_error.startswith("UNAVAILABLE")
        started = time.perf_counter()
        sink.close()
        # close() gives up after its flush budget: no wait for an RPC deadline
        assert time.perf_counter() - started < FAST.close_flush_s + 1.0
    finally:
        sink.close()  # idempotent; only releases what a failed assertion above left open


def test_after_an_outage_the_sink_delivers_the_latest_totals_and_bounded_events(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    agent_id = str(uuid.uuid4())
    opts = SinkOptions(
        rpc_deadline_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.3, max_queued_events=5
    )
    with running(db, tmp_path) as cp:
        sink = GrpcSink(cp.target, bootstrap, tmp_path / "state", agent_id, options=opts)
        try:
            sink.send(snap(10))
            assert sink.flush(10)
            assert cp.stop() == 0
            sink.send(snap(20, events=4))
            sink.send(snap(30, events=4, dropped=2))  # 8 queued into room for 5: 3 dropped
            assert not sink.flush(0.5)
            assert sink.stats().events_dropped == 5
            cp.start(cp.grpc_port, cp.http_port)
            assert sink.flush(15), sink.stats()
            s = cp.samples()
            assert rx_packets(s, agent_id) == 30
            assert sample(s, "sennet_agent_events_dropped_total", agent=agent_id) == 5
            assert stored(db, "events", agent_id) == 5
            with sqlite3.connect(db) as conn:  # the 3 oldest were dropped, the newest kept
                seqs = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
            assert seqs == [4, 5, 6, 7, 8]
            acked = sink.stats().heartbeats_acked
            assert stored(db, "heartbeats", agent_id) == acked == 2
        finally:
            sink.close()
        cp.stop()


def _encoded_size(snapshot: Snapshot) -> int:
    """What one of `snapshot`'s events costs in the queue (all of them encode alike)."""
    sizes = {event_to_proto(ev, time.time_ns()).ByteSize() + 2 for ev in snapshot.recent_events}
    assert len(sizes) == 1, sizes  # +2: the sequence number the sink gives each (1..127)
    return sizes.pop()


def test_the_event_queue_is_bounded_in_bytes_too_oldest_dropped_and_counted(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    agent_id = str(uuid.uuid4())
    each = _encoded_size(snap(0, events=1))
    opts = SinkOptions(
        rpc_deadline_s=2.0,
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
        max_queued_events=1000,  # the count bound never binds here: only bytes do
        max_queued_event_bytes=5 * each + each // 2,
    )
    with running(db, tmp_path) as cp:
        sink = GrpcSink(cp.target, bootstrap, tmp_path / "state", agent_id, options=opts)
        try:
            sink.send(snap(10))
            assert sink.flush(10)
            assert cp.stop() == 0
            sink.send(snap(20, events=4))
            sink.send(snap(30, events=4, dropped=2))  # 8 queued into bytes for 5: 3 dropped
            assert not sink.flush(0.5)
            stats = sink.stats()
            assert (stats.events_queued, stats.events_queued_bytes) == (5, 5 * each)
            assert stats.events_dropped == 5
            cp.start(cp.grpc_port, cp.http_port)
            assert sink.flush(15), sink.stats()
            assert sink.stats().events_queued_bytes == 0  # acknowledged ones are released
            assert sample(cp.samples(), "sennet_agent_events_dropped_total", agent=agent_id) == 5
            with sqlite3.connect(db) as conn:  # the 3 oldest were dropped, the newest kept
                seqs = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
            assert seqs == [4, 5, 6, 7, 8]
        finally:
            sink.close()
        cp.stop()


def test_every_acknowledged_heartbeat_survives_a_control_plane_crash(fresh: Served) -> None:
    cp = fresh.cp
    agent_id = str(uuid.uuid4())
    sink = GrpcSink(cp.target, fresh.bootstrap, cp.workdir / "state", agent_id, options=FAST)
    try:
        for n in range(1, 6):
            sink.send(snap(n * 10))
            assert sink.flush(10)
        assert cp.stop(signal.SIGKILL) == -signal.SIGKILL
        cp.start(cp.grpc_port, cp.http_port)
        assert stored(cp.db, "heartbeats", agent_id) == 5
        assert rx_packets(cp.samples(), agent_id) == 50
        sink.send(snap(60))
        assert sink.flush(15), sink.stats()
        assert rx_packets(cp.samples(), agent_id) == 60
        assert sink.stats().enrolments == 1  # the token survived the crash too
    finally:
        sink.close()


# -- TLS --------------------------------------------------------------------------------


def test_the_sink_talks_tls_and_verifies_the_server_name(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    agent_id = str(uuid.uuid4())
    tls = ["--tls-cert", str(pki["srv"]), "--tls-key", str(pki["srv-key"])]
    with running(db, tmp_path, tls) as cp:
        good = make_sink(
            cp.target, bootstrap, tmp_path / "a", agent_id, str(pki["ca"]), "controlplane.test"
        )
        wrong_name = make_sink(
            cp.target,
            bootstrap,
            tmp_path / "b",
            str(uuid.uuid4()),
            str(pki["ca"]),
            "elsewhere.test",
        )
        plain = GrpcSink(cp.target, bootstrap, tmp_path / "c", str(uuid.uuid4()), options=FAST)
        try:
            for s in (good, wrong_name, plain):
                s.send(snap(7))
            assert isinstance(good, GrpcSink) and good.flush(10)
            assert isinstance(wrong_name, GrpcSink) and not wrong_name.flush(1.0)
            assert not plain.flush(0.5)
            assert rx_packets(cp.samples(), agent_id) == 7
        finally:
            for s in (good, wrong_name, plain):
                s.close()
        cp.stop()


def test_client_certificates_are_required_when_a_client_ca_is_configured(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    tls = [
        "--tls-cert",
        str(pki["srv"]),
        "--tls-key",
        str(pki["srv-key"]),
        "--tls-client-ca",
        str(pki["ca"]),
    ]
    with running(db, tmp_path, tls) as cp:
        # Built the way the agent builds it from its settings (tls_ca, tls_cert, tls_key).
        with_cert = make_sink(
            cp.target, bootstrap, tmp_path / "a", str(uuid.uuid4()), str(pki["ca"]),
            "controlplane.test", tls_cert=str(pki["cli"]), tls_key=str(pki["cli-key"]),
        )  # fmt: skip
        without = make_sink(
            cp.target, bootstrap, tmp_path / "b", str(uuid.uuid4()), str(pki["ca"]),
            "controlplane.test",
        )  # fmt: skip
        assert isinstance(with_cert, GrpcSink) and isinstance(without, GrpcSink)
        try:
            with_cert.send(snap(3))
            without.send(snap(3))
            assert with_cert.flush(10)
            assert not without.flush(1.0)
            assert without.stats().heartbeats_acked == 0
        finally:
            with_cert.close()
            without.close()
        cp.stop()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--tls-cert", "x.pem"],
            "sennet-controlplane: error: --tls-cert and --tls-key go together\n",
        ),
        (
            ["--tls-client-ca", "ca.pem"],
            "sennet-controlplane: error: --tls-client-ca needs --tls-cert and --tls-key\n",
        ),
    ],
)
def test_incomplete_tls_flags_are_one_clear_error(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    result = cli(tmp_path / "cp.db", "serve", *flags)
    assert (result.returncode, result.stderr) == (2, message)

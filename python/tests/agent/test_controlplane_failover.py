"""The sink's failover between control-plane replicas: two real processes on one database.

Each replica is a real `sennet-controlplane serve` on its own port, both on the
same SQLite file (as replicas behind no load balancer would be). Faults are
real: SIGKILL (connection refused from then on), SIGSTOP (a hung replica: the
call runs into its deadline), a bogus bootstrap token (an authentication
refusal, which must not move the sink).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sennet.agent.sinks.controlplane_grpc import GrpcSink, SinkOptions, make_sink
from sennet.common.retry import retry
from sennet.testing.agent import run_cli
from sennet.testing.controlplane import ControlPlane, create_bootstrap_token, running
from sennet.testing.pki import make_pki
from sennet.testing.scrape import matching
from tests.agent.test_controlplane_grpc_sink import rx_packets, snap, stored

FAILBACK_S = 1.5
OPTS = SinkOptions(
    rpc_deadline_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.3, failback_s=FAILBACK_S
)
# Each replica reloads the shared database's view for its /metrics this often.
REFRESH = ["--fleet-refresh", "0.2"]
LOG = "sennet.agent.sinks.controlplane_grpc"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ControlPlane, ControlPlane, str]]:
    """Replicas A and B on one database, and a bootstrap token it accepts."""
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with (
        running(db, tmp_path, REFRESH, name="cp-a") as a,
        running(db, tmp_path, REFRESH, name="cp-b") as b,
    ):
        yield a, b, bootstrap


def events_named(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == name]


def test_a_killed_replica_is_left_within_the_same_heartbeat_and_the_first_taken_back_later(
    pair: tuple[ControlPlane, ControlPlane, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b, bootstrap = pair
    caplog.set_level(logging.DEBUG, logger=LOG)
    agent_id = str(uuid.uuid4())
    sink = GrpcSink([a.target, b.target], bootstrap, tmp_path / "state", agent_id, options=OPTS)
    try:
        sink.send(snap(1))
        assert sink.flush(10)
        assert (sink.stats().control_plane, sink.stats().failovers) == (a.target, 0)

        assert a.stop(signal.SIGKILL) == -signal.SIGKILL
        left_at = time.monotonic()
        sink.send(snap(2))
        assert sink.flush(5)
        took = time.monotonic() - left_at
        print(f"killed replica: heartbeat acknowledged by the other {took:.3f} s after the kill")
        stats = sink.stats()
        assert (stats.control_plane, stats.failovers, stats.failures) == (b.target, 1, 1)
        # The retry went to B at once: no backoff, one refused connect and one call.
        assert took < OPTS.backoff_initial_s + OPTS.rpc_deadline_s, took
        assert stats.enrolments == 1  # B accepted the token A's database issued
        b.wait_until("B renders 2", lambda: rx_packets(b.samples(), agent_id) == 2, timeout=10)
        (moved,) = events_named(caplog, "control_plane_failover")
        assert (moved["from"], moved["to"], str(moved["reason"])[:12]) == (
            a.target,
            b.target,
            "UNAVAILABLE:",
        )

        # A stays down for 2.5 failback periods while heartbeats keep going to B.
        rx = 2
        while time.monotonic() - left_at < 2.5 * FAILBACK_S:
            rx += 1
            sink.send(snap(rx))
            assert sink.flush(5)
            time.sleep(0.1)
        probes = len(events_named(caplog, "failback_probe_failed"))
        print(f"failback probes while A was down {time.monotonic() - left_at:.1f} s: {probes}")
        assert 1 <= probes <= int(2.5 * FAILBACK_S / FAILBACK_S), probes
        assert sink.stats().control_plane == b.target

        a.start()  # same ports, same database

        def back(last: bool) -> bool | None:
            nonlocal rx
            rx += 1
            sink.send(snap(rx))
            assert sink.flush(5)
            return True if sink.stats().control_plane == a.target else None

        retry(back, 4 * FAILBACK_S + 10, interval=0.1, what="the sink returned to A")
        stats = sink.stats()
        assert (stats.failovers, stats.failbacks, stats.enrolments) == (1, 1, 1)
        (returned,) = events_named(caplog, "control_plane_failback")
        assert (returned["from"], returned["to"]) == (b.target, a.target)
        a.wait_until("A renders the last", lambda: rx_packets(a.samples(), agent_id) == rx)
        assert stored(a.db, "heartbeats", agent_id) >= stats.heartbeats_acked
        assert a.scalar("SELECT count(*) FROM tokens WHERE agent_id = ?", agent_id) == 1
    finally:
        sink.close()


def test_a_hung_replica_is_left_when_the_call_runs_into_its_deadline(
    pair: tuple[ControlPlane, ControlPlane, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b, bootstrap = pair
    caplog.set_level(logging.DEBUG, logger=LOG)
    agent_id = str(uuid.uuid4())
    sink = GrpcSink([a.target, b.target], bootstrap, tmp_path / "state", agent_id, options=OPTS)
    assert a.proc is not None
    try:
        sink.send(snap(5))
        assert sink.flush(10)
        a.proc.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        sink.send(snap(6))
        assert sink.flush(OPTS.rpc_deadline_s + 5)
        took = time.monotonic() - stopped_at
        print(f"hung replica: heartbeat acknowledged by the other after {took:.3f} s")
        (moved,) = events_named(caplog, "control_plane_failover")
        assert str(moved["reason"]).startswith("DEADLINE_EXCEEDED:")
        assert OPTS.rpc_deadline_s <= took < OPTS.rpc_deadline_s + 1.0, took
        assert (sink.stats().control_plane, sink.stats().failovers) == (b.target, 1)
        b.wait_until("B renders 6", lambda: rx_packets(b.samples(), agent_id) == 6, timeout=10)
    finally:
        a.proc.send_signal(signal.SIGCONT)
        sink.close()


def test_an_authentication_refusal_is_no_reason_to_fail_over(
    pair: tuple[ControlPlane, ControlPlane, str],
    tmp_path: Path,
) -> None:
    a, b, _ = pair
    agent_id = str(uuid.uuid4())
    bogus = "sb.0000.not-a-token"
    sink = GrpcSink([a.target, b.target], bogus, tmp_path / "state", agent_id, options=OPTS)
    try:
        sink.send(snap(1))
        retry(
            lambda last: True if sink.stats().enrolments_refused >= 3 else None,
            10,
            what="three refused enrolments",
        )
    finally:
        sink.close()
    stats = sink.stats()  # final: the thread has stopped
    assert (stats.control_plane, stats.failovers) == (a.target, 0)

    def refused(cp: ControlPlane) -> float:
        name = "sennet_controlplane_requests_rejected_total"
        found = matching(cp.samples(), name, method="Register", code="unauthenticated")
        return sum(found.values())

    assert refused(a) == stats.enrolments_refused  # every refusal came from A ...
    assert refused(b) == 0  # ... and B was never asked


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("127.0.0.1:7443,cp-b:70000", "address 2 of 2: a port 1..65535 in 'cp-b:70000'"),
        ("127.0.0.1:7443,,cp-b:7443", "address 2 of 3: \"host:port\", not ''"),
        ("cp-a,cp-b:7443", "address 1 of 2: \"host:port\", not 'cp-a'"),
        ("cp-a:7443,cp-b:7443,cp-a:7443", "each address once; 'cp-a:7443' is listed twice"),
    ],
)
def test_a_bad_address_in_the_list_is_a_config_error_naming_it(
    value: str, named: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    result = run_cli(
        "",
        ["run", "--interfaces", "lo", "--state-dir", str(state), "--control-plane", value],
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        'sennet-agent: error: control_plane (from flags): expected "host:port" or a '
        f"comma-separated list of them ({named}), got {value!r}\n"
    )
    assert not state.exists()  # refused before anything was touched


def test_with_two_replicas_down_the_same_heartbeat_cycles_on_to_the_third(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    names = ("cp-a", "cp-b", "cp-c")
    with contextlib.ExitStack() as stack:
        a, b, c = (stack.enter_context(running(db, tmp_path, REFRESH, name=n)) for n in names)
        agent_id = str(uuid.uuid4())
        targets = [a.target, b.target, c.target]
        sink = GrpcSink(targets, bootstrap, tmp_path / "state", agent_id, options=OPTS)
        stack.callback(sink.close)
        sink.send(snap(1))
        assert sink.flush(10)
        a.stop(signal.SIGKILL)
        b.stop(signal.SIGKILL)
        started = time.monotonic()
        sink.send(snap(2))
        assert sink.flush(5)
        took = time.monotonic() - started
        stats = sink.stats()
        assert (stats.control_plane, stats.failovers, stats.failures) == (c.target, 2, 2)
        assert took < OPTS.backoff_initial_s + OPTS.rpc_deadline_s, took  # no backoff between
        c.wait_until("C renders 2", lambda: rx_packets(c.samples(), agent_id) == 2, timeout=10)
        # C fails too: the list wraps around to A, which is back by then.
        a.start()
        c.stop(signal.SIGKILL)
        sink.send(snap(3))
        assert sink.flush(10)
        stats = sink.stats()
        assert (stats.control_plane, stats.enrolments) == (a.target, 1)
        # C -> A; and on round again if A's old channel was still waiting to reconnect.
        moves = [(m["from"], m["to"]) for m in events_named(caplog, "control_plane_failover")]
        assert moves[:3] == [(a.target, b.target), (b.target, c.target), (c.target, a.target)]
        assert len(moves) == stats.failovers and moves[-1] == (c.target, a.target)
        a.wait_until("A renders 3", lambda: rx_packets(a.samples(), agent_id) == 3, timeout=10)


def test_tls_settings_given_once_hold_for_every_replica(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    tls = [
        "--tls-cert", str(pki["srv"]), "--tls-key", str(pki["srv-key"]),
        "--tls-client-ca", str(pki["ca"]),
    ]  # fmt: skip
    with (
        running(db, tmp_path, [*tls, *REFRESH], name="cp-a") as a,
        running(db, tmp_path, [*tls, *REFRESH], name="cp-b") as b,
    ):
        agent_id = str(uuid.uuid4())
        # Both listen on 127.0.0.1, which is not in the certificate: the name is set once.
        sink = make_sink(
            f"{a.target},{b.target}", bootstrap, tmp_path / "state", agent_id, str(pki["ca"]),
            "controlplane.test", tls_cert=str(pki["cli"]), tls_key=str(pki["cli-key"]),
            options=OPTS,
        )  # fmt: skip
        assert isinstance(sink, GrpcSink)
        try:
            sink.send(snap(1))
            assert sink.flush(10)
            a.stop(signal.SIGKILL)
            sink.send(snap(2))
            assert sink.flush(5)
            stats = sink.stats()
            assert (stats.control_plane, stats.failovers, stats.enrolments) == (b.target, 1, 1)
            b.wait_until("B renders 2", lambda: rx_packets(b.samples(), agent_id) == 2)
        finally:
            sink.close()

"""One bad client harms no other: each heartbeat is judged alone, load is bounded, faults show.

Real control-plane processes, real gRPC and Connect, real SQLite files. Where a
test needs heartbeats to wait in the writer's queue (to form one commit group,
to fill the queue, to keep calls in progress), another connection holds the
database's real write lock, as a stuck tool would.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc

from sennet.common.retry import retry
from sennet.controlplane.settings import BY_NAME
from sennet.controlplane.store import Store
from sennet.proto.contract import HEARTBEAT
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.controlplane import (
    CallResult,
    ControlPlane,
    Served,
    cli,
    create_bootstrap_token,
    heartbeat_request,
    running,
    write_lock,
)
from sennet.testing.scrape import sample

U63 = (1 << 63) - 1
OK = (grpc.StatusCode.OK, "")


def _rejected(cp: ControlPlane, reason: str, code: str) -> float | None:
    return sample(
        cp.samples(),
        "sennet_controlplane_requests_rejected_total",
        method="Heartbeat",
        code=code,
        reason=reason,
    )


def _wait_for_pending(cp: ControlPlane, n: int) -> None:
    """Until n heartbeats wait in the writer's queue (gives up quietly after 5 s)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if sample(cp.samples(), "sennet_controlplane_pending_heartbeats") == n:
            return
        time.sleep(0.05)


def _send(
    pool: ThreadPoolExecutor, cp: ControlPlane, token: str, req: pb.HeartbeatRequest
) -> Future[CallResult]:
    return pool.submit(cp.call_full, HEARTBEAT, req.SerializeToString(), token, 30.0)


def _commits(cp: ControlPlane) -> float:
    return sample(cp.samples(), "sennet_controlplane_store_commits_total") or 0.0


def test_a_poisoned_heartbeat_in_a_commit_group_is_refused_alone_and_the_others_are_stored(
    fresh: Served,
) -> None:
    cp = fresh.cp
    poisoned, poison_token = cp.register(fresh.bootstrap)
    # Its counter is at the top of what SQLite holds; the next reading (a reset to 5) would
    # take the exported total past 2^63-1.
    assert cp.heartbeat(poison_token, heartbeat_request(poisoned, rx=(U63, 0))) == OK
    first, first_token = cp.register(fresh.bootstrap)
    good = [cp.register(fresh.bootstrap) for _ in range(3)]
    commits_before = _commits(cp)
    with ThreadPoolExecutor(8) as pool:
        with write_lock(cp.db):
            # The writer takes this one and waits on the lock; what follows queues behind it
            # and is written as the next group.
            head = _send(pool, cp, first_token, heartbeat_request(first, rx=(1, 60)))
            time.sleep(0.5)
            bad = _send(pool, cp, poison_token, heartbeat_request(poisoned, rx=(5, 300)))
            rest = [
                _send(pool, cp, token, heartbeat_request(agent, rx=(n + 1, 60 * (n + 1))))
                for n, (agent, token) in enumerate(good)
            ]
            _wait_for_pending(cp, 4)
        answers = [f.result() for f in (head, bad, *rest)]
    assert [(a.code, a.details) for a in answers] == [
        OK,
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"interfaces[0].rx_packets: 5 would take the stored total ({U63}) past {U63} "
            "(2^63-1, the store's integer limit); totals never wrap, so this heartbeat is refused",
        ),
        OK,
        OK,
        OK,
    ]
    assert _commits(cp) == commits_before + 2  # the head alone, then the group of four
    stored = dict(cp.query("SELECT agent_id, count(*) FROM heartbeats GROUP BY agent_id"))
    assert stored == {poisoned: 1, first: 1, **{agent: 1 for agent, _ in good}}
    s = cp.samples()
    labels = {"interface": "eth1", "direction": "rx"}
    assert sample(s, "sennet_interface_packets_total", agent=poisoned, **labels) == U63
    for n, (agent, _) in enumerate(good):
        assert sample(s, "sennet_interface_packets_total", agent=agent, **labels) == n + 1
    assert _rejected(cp, "counter_overflow", "invalid_argument") == 1
    status, body = cp.get("/health")  # a bad client is not a failing store
    assert status == 200, body


def test_an_overflowing_event_total_over_connect_is_http_400_naming_the_field(
    shared: Served,
) -> None:
    cp = shared.cp
    agent_id, token = cp.register(shared.bootstrap)
    assert cp.heartbeat(token, heartbeat_request(agent_id, events={"land": U63})) == OK
    req = heartbeat_request(agent_id, events={"land": 2})  # a reset: the total would pass 2^63-1
    status, body = cp.connect(HEARTBEAT, req.SerializeToString(), token, "application/proto")
    assert (status, body) == (
        400,
        {
            "code": "invalid_argument",
            "message": f"events_by_kind['land']: 2 would take the stored total ({U63}) past "
            f"{U63} (2^63-1, the store's integer limit); totals never wrap, so this heartbeat "
            "is refused",
        },
    )
    # the agent's other heartbeats still go through while that series stays where it was
    assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(3, 180), events={"land": U63})) == OK


def test_an_agent_past_its_series_cap_is_refused_naming_the_limit_and_others_are_not(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--max-series-per-agent", "8"]) as cp:
        agent_id, token = cp.register(bootstrap)
        other, other_token = cp.register(bootstrap)
        # eth1's four counters and events_dropped_by_agent: 5 series
        assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(1, 60))) == OK
        req = heartbeat_request(agent_id, rx=(2, 120))
        req.interfaces.append(pb.InterfaceCounters(name="eth2", ifindex=8, rx_packets=1))
        assert cp.heartbeat(token, req) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "interfaces[1].tx_bytes: would be this agent's series number 9, at most 8 allowed "
            "(max_series_per_agent)",
        )
        assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(3, 180))) == OK
        assert cp.heartbeat(other_token, heartbeat_request(other, rx=(1, 60))) == OK
        assert _rejected(cp, "too_many_series", "invalid_argument") == 1
        assert cp.scalar("SELECT count(*) FROM series WHERE agent_id = ?", agent_id) == 5
        assert cp.stop() == 0


def test_an_unknown_event_kind_is_invalid_argument_naming_the_field(shared: Served) -> None:
    cp = shared.cp
    agent_id, token = cp.register(shared.bootstrap)
    kinds = (
        "ipv4_bad_ihl, ipv4_bad_len, land, large_packet, tcp_null, tcp_syn_fin, tcp_syn_rst, "
        "tcp_xmas, truncated_l3, truncated_l4"
    )
    before = _rejected(cp, "unknown_event_kind", "invalid_argument") or 0
    assert cp.heartbeat(token, heartbeat_request(agent_id, events={"made_up": 1})) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"events_by_kind['made_up']: 'made_up' is not a known event kind (one of {kinds})",
    )
    ev = pb.Event(ts_unix_ns=1, ifindex=7, direction=pb.DIRECTION_RX, kind="made_up")
    assert cp.heartbeat(token, heartbeat_request(agent_id, recent=[ev])) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"recent_events[0].kind: 'made_up' is not a known event kind (one of {kinds})",
    )
    assert _rejected(cp, "unknown_event_kind", "invalid_argument") == before + 2
    assert cp.scalar("SELECT count(*) FROM heartbeats WHERE agent_id = ?", agent_id) == 0


def test_the_control_planes_event_kinds_are_the_agents() -> None:
    from sennet.agent.datapath.layout import EventKind  # the test may import both sides
    from sennet.controlplane import validate

    assert {k.label for k in EventKind} == validate.EVENT_KINDS


def _connect_with_headers(
    cp: ControlPlane, req: pb.HeartbeatRequest, token: str
) -> tuple[int, str | None, dict[str, object]]:
    """A Connect heartbeat: (HTTP status, its Retry-After header, the JSON error body)."""
    call = urllib.request.Request(
        cp.http + HEARTBEAT.path,
        data=req.SerializeToString(),
        headers={"Content-Type": "application/proto", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(call, timeout=30) as resp:
            return resp.status, resp.headers.get("Retry-After"), {}
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Retry-After"), json.loads(err.read())


def test_a_full_write_queue_is_resource_exhausted_with_a_retry_hint(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--max-pending-heartbeats", "2"]) as cp:
        agents = [cp.register(bootstrap) for _ in range(4)]
        with ThreadPoolExecutor(4) as pool:
            with write_lock(cp.db):
                held = [_send(pool, cp, agents[0][1], heartbeat_request(agents[0][0]))]
                time.sleep(0.5)  # the writer has taken the first and waits on the lock
                held += [_send(pool, cp, t, heartbeat_request(a)) for a, t in agents[1:3]]
                _wait_for_pending(cp, 2)
                full = cp.call_full(
                    HEARTBEAT, heartbeat_request(agents[3][0]).SerializeToString(), agents[3][1]
                )
                status, retry_after, body = _connect_with_headers(
                    cp, heartbeat_request(agents[3][0]), agents[3][1]
                )
            assert [f.result().code for f in held] == [grpc.StatusCode.OK] * 3
        message = "heartbeat queue: at the limit of 2 (max_pending_heartbeats); retry after 1 s"
        assert (full.code, full.details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        assert full.trailing["grpc-retry-pushback-ms"] == "1000"
        # A Connect error body is {"code", "message", "details"} by the spec: the hint rides
        # in Retry-After only (the non-standard retry_after_ms body field is gone).
        assert (status, retry_after, body) == (
            429,
            "1",
            {"code": "resource_exhausted", "message": message},
        )
        assert _rejected(cp, "queue_full", "resource_exhausted") == 2
        assert cp.heartbeat(agents[3][1], heartbeat_request(agents[3][0])) == OK
        assert cp.stop() == 0


def test_calls_past_the_concurrency_cap_are_resource_exhausted_with_a_retry_hint(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--max-concurrent-calls", "2"]) as cp:
        agents = [cp.register(bootstrap) for _ in range(3)]
        with ThreadPoolExecutor(2) as pool:
            with write_lock(cp.db):
                held = [_send(pool, cp, t, heartbeat_request(a)) for a, t in agents[:2]]
                time.sleep(0.5)
                extra = cp.call_full(
                    HEARTBEAT, heartbeat_request(agents[2][0]).SerializeToString(), agents[2][1]
                )
            assert [f.result().code for f in held] == [grpc.StatusCode.OK] * 2
        assert (extra.code, extra.details) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "calls in progress: at the limit of 2 (max_concurrent_calls); retry after 0.5 s",
        )
        assert extra.trailing["grpc-retry-pushback-ms"] == "500"
        assert _rejected(cp, "too_many_calls", "resource_exhausted") == 1
        assert cp.heartbeat(agents[2][1], heartbeat_request(agents[2][0])) == OK
        assert cp.stop() == 0


def _grpc_health(cp: ControlPlane) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(cp.target) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def _until(what: str, predicate: Callable[[], bool], timeout: float) -> None:
    retry(lambda last: True if predicate() else None, timeout, interval=0.1, what=what)


def test_health_fails_while_the_database_is_locked_and_recovers_without_traffic(
    fresh: Served,
) -> None:
    cp = fresh.cp
    agent_id, token = cp.register(fresh.bootstrap)
    assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(1, 60))) == OK
    with ThreadPoolExecutor(1) as pool, write_lock(cp.db):
        stuck = _send(pool, cp, token, heartbeat_request(agent_id, rx=(2, 120)))
        # the writer gives up on the lock after its 10 s busy timeout
        _until("/health 503", lambda: cp.get("/health")[0] == 503, 20)
        report = json.loads(cp.get("/health")[1])
        assert report["writer"]["last_error"] == "OperationalError: database is locked"
        _until("gRPC health NOT_SERVING", lambda: _grpc_health(cp) == "NOT_SERVING", 5)
        assert stuck.result().code == grpc.StatusCode.UNAVAILABLE  # never acknowledged
    # The lock is gone; no agent sends anything, yet health comes back by itself.
    _until("/health 200 again", lambda: cp.get("/health")[0] == 200, 5)
    _until("gRPC health SERVING again", lambda: _grpc_health(cp) == "SERVING", 5)
    assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(3, 180))) == OK
    assert cp.scalar("SELECT count(*) FROM heartbeats WHERE agent_id = ?", agent_id) == 2


def test_health_fails_while_a_commit_is_stuck_on_a_hung_sibling_writer(fresh: Served) -> None:
    cp = fresh.cp
    agent_id, token = cp.register(fresh.bootstrap)
    # Another control-plane process on the same database (--reuse-port) that hung while
    # holding the writers' lock: the lock has no timeout, so our commit waits for good.
    fd = os.open(Store(cp.db).writer_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with ThreadPoolExecutor(1) as pool:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                stuck = _send(pool, cp, token, heartbeat_request(agent_id, rx=(1, 60)))
                _until("/health 503", lambda: cp.get("/health")[0] == 503, 25)
                writer = json.loads(cp.get("/health")[1])["writer"]
                assert writer["last_error"] is None and writer["stalled_s"] >= 15, (
                    writer
                )  # rounded to 0.1 s
                _until("gRPC health NOT_SERVING", lambda: _grpc_health(cp) == "NOT_SERVING", 5)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            assert stuck.result().code == grpc.StatusCode.OK  # it was only late
    finally:
        os.close(fd)
    _until("/health 200 again", lambda: cp.get("/health")[0] == 200, 5)
    _until("gRPC health SERVING again", lambda: _grpc_health(cp) == "SERVING", 5)


def _corrupt(db: Path) -> None:
    """Overwrite every page after the first (header and schema stay, the tables are junk)."""
    with sqlite3.connect(db) as conn:
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(page)
        f.write(b"\xa5" * (size - page))


def test_a_corrupted_database_is_one_clear_error_naming_the_file(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    create_bootstrap_token(db)
    _corrupt(db)
    for args in (
        ("token", "list"),
        ("serve", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"),
    ):
        result = cli(db, *args)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.splitlines()[0] == (
            f"sennet-controlplane: error: cannot use database {db}: "
            "database disk image is malformed"
        ), result.stderr


def test_every_new_limit_is_a_setting() -> None:
    for name in ("max_pending_heartbeats", "max_concurrent_calls", "max_series_per_agent"):
        assert BY_NAME[name].env == f"SENNET_CONTROLPLANE_{name.upper()}"

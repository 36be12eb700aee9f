"""SQLite store: WAL, migrations, durability before acknowledgement, retention, restarts."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sennet.common.errors import UserError
from sennet.common.retry import retry
from sennet.controlplane.fleet import Fleet, SeriesKey
from sennet.controlplane.identity import Identity
from sennet.controlplane.schema import MIGRATIONS, SCHEMA_VERSION
from sennet.controlplane.store import Store
from sennet.controlplane.tokens import TokenKind
from sennet.controlplane.writer import HeartbeatWriter
from sennet.proto.contract import HEARTBEAT, REGISTER
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.controlplane import (
    ControlPlane,
    Served,
    create_bootstrap_token,
    heartbeat_request,
    running,
)
from sennet.testing.scrape import sample
from sennet.testing.telemetry import full_request

INSIGHT_TABLES = (
    "flow_samples",
    "talkers",
    "microbursts",
    "dns_samples",
    "dns_counts",
    "dns_names",
    "tcp_samples",
    "histogram_samples",
)

OK = (grpc.StatusCode.OK, "")


def enrolled(store: Store) -> str:
    """A new agent id enrolled straight into the store (no server), with a bootstrap token."""
    identity = Identity(store)
    bootstrap = identity.create_bootstrap_token("test")
    agent_id = str(uuid.uuid4())
    identity.enrol(REGISTER.request(agent_id=agent_id), TokenKind.BOOTSTRAP, bootstrap.token_id)
    return agent_id


def grpc_health(cp: ControlPlane) -> str:
    """The standard gRPC health service's answer for the whole server."""
    with grpc.insecure_channel(cp.target) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def test_the_standard_grpc_health_service_answers(fresh: Served) -> None:
    assert grpc_health(fresh.cp) == "SERVING"


def test_a_new_database_is_in_wal_mode_at_the_current_schema_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "new.db")
    assert store.migrate() == SCHEMA_VERSION == 7
    assert store.migrate() == 7  # idempotent
    with sqlite3.connect(tmp_path / "new.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (7,)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        views = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='view'")}
    assert tables == {
        "tokens",
        "agents",
        "heartbeats",
        "series_totals",
        "event_streams",
        "update_offers",
    }
    # migration 6: the samples live packed on the heartbeat row, read through views;
    # migration 7: an agent's series totals live packed on one row, read through `series`
    assert views == {"interface_samples", "kind_samples", "events", "series", *INSIGHT_TABLES}


def test_a_database_from_a_newer_control_plane_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 8")
    with pytest.raises(UserError) as err:
        Store(db).migrate()
    assert err.value.message == (f"{db} has schema version 8, newer than this control plane's 7")


def test_a_file_that_is_not_a_database_is_refused_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "junk.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError) as err:
        Store(db).migrate()
    assert err.value.message == f"cannot use database {db}: file is not a database"


def test_an_acknowledged_heartbeat_is_in_the_database_with_its_events(shared: Served) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)
    ev = pb.Event(
        ts_unix_ns=1_700_000_000_000_000_000,
        ifindex=7,
        direction=pb.DIRECTION_TX,
        kind="tcp_xmas",
        pkt_len=54,
        ip_version=6,
        l4_proto=6,
        src_port=1234,
        dst_port=80,
        src_addr="fd00::1",
        dst_addr="fd00::2",
        tcp_flags=0x29,
        vlan_tags=1,
        eth_proto=0x86DD,
    )
    req = heartbeat_request(agent_id, rx=(9, 900), events={"tcp_xmas": 1}, recent=[ev])
    code, _, out = shared.cp.call_raw(HEARTBEAT.name, req.SerializeToString(), token)
    assert code == grpc.StatusCode.OK and HEARTBEAT.response.FromString(out).events_stored == 1
    with sqlite3.connect(shared.cp.db) as conn:
        rows = conn.execute(
            "SELECT s.ifname, s.ifindex, s.rx_packets, s.rx_bytes, k.kind, k.events"
            " FROM heartbeats h"
            " JOIN interface_samples s USING (heartbeat_id) JOIN kind_samples k USING"
            " (heartbeat_id) WHERE h.agent_id = ?",
            (agent_id,),
        ).fetchall()
        events = conn.execute(
            "SELECT ts_unix_ns, ifindex, direction, kind, pkt_len, ip_version, l4_proto, src_port,"
            " dst_port, src_addr, dst_addr, tcp_flags, vlan_tags, eth_proto FROM events"
            " WHERE agent_id = ?",
            (agent_id,),
        ).fetchall()
    assert rows == [("eth1", 7, 9, 900, "tcp_xmas", 1)]
    assert events == [
        (
            1_700_000_000_000_000_000,
            7,
            "tx",
            "tcp_xmas",
            54,
            6,
            6,
            1234,
            80,
            "fd00::1",
            "fd00::2",
            0x29,
            1,
            0x86DD,
        )
    ]


def test_totals_survive_a_control_plane_restart_and_resets_after_it_still_count(
    fresh: Served,
) -> None:
    cp = fresh.cp
    agent_id, token = cp.register(fresh.bootstrap)
    assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(100, 6400))) == OK
    assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(10, 640))) == OK  # reset
    cp.restart()
    labels = {"agent": agent_id, "interface": "eth1", "direction": "rx"}
    assert sample(cp.samples(), "sennet_interface_packets_total", **labels) == 110
    assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(4, 256))) == OK  # another reset
    s = cp.samples()
    assert sample(s, "sennet_interface_packets_total", **labels) == 114
    assert sample(s, "sennet_interface_bytes_total", **labels) == 6400 + 640 + 256
    assert sample(s, "sennet_agent_series_resets_total", agent=agent_id) == 4


def test_retention_deletes_old_heartbeats_and_their_events_but_keeps_totals(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.db")
    store.migrate()
    agent_id = enrolled(store)
    fleet = Fleet(store.load_fleet())
    writer = HeartbeatWriter(store, fleet, retention_s=0.3, prune_every_s=0.1)
    writer.start()
    ev = pb.Event(ts_unix_ns=1, ifindex=7, direction=pb.DIRECTION_RX, kind="land")

    def insight_rows() -> int:
        conn = store.local()
        return sum(
            int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in INSIGHT_TABLES
        )

    try:
        for n in (1, 2, 3):
            req = full_request(agent_id, n)  # flows, microbursts, DNS and TCP ride along
            req.MergeFrom(heartbeat_request(agent_id, rx=(n, n * 60), recent=[ev]))
            del req.interfaces[0]  # full_request's own interface; keep the one above
            writer.submit(req).result(5)
        assert (store.count("heartbeats"), store.count("events")) == (3, 3)
        assert insight_rows() == 3 * (1 + 3 + 4 + 1 + 8 + 4 + 1 + 3)

        def pruned(last: bool) -> bool | None:
            return True if store.count("heartbeats") == 0 else None

        retry(pruned, 5.0, interval=0.1, what="old heartbeats pruned")
        assert (store.count("events"), store.count("interface_samples")) == (0, 0)
        assert insight_rows() == 0  # the same retention as the heartbeats they came with
    finally:
        writer.stop()
    view = Store(tmp_path / "r.db").load_fleet()[0]
    assert view.series[SeriesKey("rx_packets", "eth1")].total == 3
    assert view.heartbeats == 3


def test_health_reports_ok_with_the_schema_version(fresh: Served) -> None:
    status, body = fresh.cp.get("/health")
    assert status == 200
    assert json.loads(body) == {
        "agents": 0,
        "status": "ok",
        "database": {"ok": True, "path": str(fresh.cp.db), "schema_version": 7},
        "writer": {"alive": True, "commits": 0, "last_error": None},
    }


def test_health_fails_when_the_database_file_is_gone(fresh: Served) -> None:
    for path in fresh.cp.db.parent.glob("cp.db*"):
        path.unlink()
    status, body = fresh.cp.get("/health")
    report = json.loads(body)
    assert status == 503 and report["status"] == "fail"
    assert report["database"] == {
        "ok": False,
        "path": str(fresh.cp.db),
        "error": "OperationalError: unable to open database file",
    }


def test_a_heartbeat_that_cannot_be_committed_is_not_acknowledged(fresh: Served) -> None:
    cp = fresh.cp
    agent_id, token = cp.register(fresh.bootstrap)
    assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(1, 60))) == OK
    with sqlite3.connect(cp.db) as conn:  # a trigger makes every heartbeat insert fail
        conn.execute(
            "CREATE TRIGGER jam BEFORE INSERT ON heartbeats BEGIN "
            "SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    code, details = cp.heartbeat(token, heartbeat_request(agent_id, rx=(2, 120)))
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "store: disk on fire")
    labels = {"agent": agent_id, "interface": "eth1", "direction": "rx"}
    assert sample(cp.samples(), "sennet_interface_packets_total", **labels) == 1  # not published
    status, body = cp.get("/health")
    assert status == 503 and json.loads(body)["writer"]["last_error"] == (
        "IntegrityError: disk on fire"
    )
    retry(
        lambda last: True if grpc_health(cp) == "NOT_SERVING" else None,
        5.0,
        what="gRPC health NOT_SERVING",
    )
    with sqlite3.connect(cp.db) as conn:
        conn.execute("DROP TRIGGER jam")
    assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(2, 120))) == OK
    assert sample(cp.samples(), "sennet_interface_packets_total", **labels) == 2
    assert cp.get("/health")[0] == 200
    retry(
        lambda last: True if grpc_health(cp) == "SERVING" else None,
        5.0,
        what="gRPC health SERVING again",
    )


@pytest.mark.parametrize("writer", [[], ["--writer-process"]], ids=["thread", "process"])
def test_processes_sharing_the_port_and_database_keep_exact_totals(
    tmp_path: Path, writer: list[str]
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    flags = ["--reuse-port", "--fleet-refresh", "0.2", *writer]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running(db, tmp_path / "a", flags) as one, running(db, tmp_path / "b", flags) as _:
        two = _
        two.stop()
        two.start(grpc_port=one.grpc_port)
        agent_id, token = one.register(bootstrap)
        for n in range(1, 41):  # a new connection per call: SO_REUSEPORT spreads them
            rx = (n * 10 if n != 20 else 5, n * 1000)  # one reset (agent restart) at n=20
            assert one.heartbeat(token, heartbeat_request(agent_id, rx=rx)) == OK
        # 10..190, then 5 after the reset, then 210 (+205), then +10 for each of n=22..40
        expected = 190 + 5 + 205 + 19 * 10
        labels = {"agent": agent_id, "interface": "eth1", "direction": "rx"}

        def converged(last: bool) -> bool | None:
            got = [
                sample(cp.samples(), "sennet_interface_packets_total", **labels)
                for cp in (one, two)
            ]
            return True if got == [expected, expected] else None

        retry(converged, 5.0, interval=0.1, what="both processes export the same totals")
        accepted = [
            sample(cp.samples(), "sennet_controlplane_heartbeats_accepted_total", transport="grpc")
            for cp in (one, two)
        ]
        assert sum(a or 0 for a in accepted) == 40 and all(accepted), accepted
        one.stop()
        two.stop()


def test_a_heartbeat_whose_caller_gave_up_is_skipped_and_the_writer_keeps_going(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "c.db")
    store.migrate()
    agent_id = enrolled(store)
    writer = HeartbeatWriter(store, Fleet(store.load_fleet()), retention_s=3600)
    writer.start()
    blocker = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the writer's first commit waits on this lock
        first = writer.submit(heartbeat_request(agent_id, rx=(1, 60)))
        time.sleep(0.2)
        cancelled = writer.submit(heartbeat_request(agent_id, rx=(2, 120)))
        third = writer.submit(heartbeat_request(agent_id, rx=(3, 180)))
        assert cancelled.cancel()  # as grpc.aio does when the client disconnects
        blocker.execute("ROLLBACK")
        assert first.result(10).events_stored == 0
        assert third.result(10).events_stored == 0
        assert writer.alive() and store.count("heartbeats") == 2
    finally:
        blocker.close()
        writer.stop()


def test_a_version_1_database_is_migrated_keeping_its_data(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
        conn.execute("INSERT INTO agents (agent_id, registered_at) VALUES ('a', 1.0)")
        conn.execute("INSERT INTO heartbeats VALUES (1, 'a', 2.0, 3.0, 'v', 'k', 0)")
        conn.execute(
            "INSERT INTO events (heartbeat_id, agent_id, ts_unix_ns, ifindex, direction, kind,"
            " pkt_len, ip_version, l4_proto, src_port, dst_port, src_addr, dst_addr, tcp_flags,"
            " vlan_tags, eth_proto) VALUES (1, 'a', 5, 2, 'rx', 'land', 60, 4, 6, 1, 1,"
            " '10.0.0.1', '10.0.0.1', 2, 0, 2048)"
        )
    assert Store(db).migrate() == 7
    with sqlite3.connect(db) as conn:
        # migration 5: an agent from before updates has no image and no outcome
        assert conn.execute(
            "SELECT image_version, image_slot, update_result, update_at FROM agents"
        ).fetchall() == [("", "", "", 0.0)]
        assert conn.execute("SELECT agent_id, kind, seq FROM events").fetchall() == [
            ("a", "land", 0)
        ]
        assert conn.execute("SELECT count(*) FROM event_streams").fetchone() == (0,)


def test_a_resent_batch_of_numbered_events_is_stored_once(shared: Served) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)

    def ev(seq: int) -> pb.Event:
        return pb.Event(ts_unix_ns=seq, ifindex=7, direction=pb.DIRECTION_RX, kind="land", seq=seq)

    def send(seqs: list[int]) -> int:
        req = heartbeat_request(agent_id, recent=[ev(s) for s in seqs])
        req.event_stream = "stream-1"
        code, details, out = shared.cp.call_raw(HEARTBEAT.name, req.SerializeToString(), token)
        assert code == grpc.StatusCode.OK, details
        return HEARTBEAT.response.FromString(out).events_stored

    assert send([1, 2, 3]) == 3
    assert send([1, 2, 3]) == 0  # the reply to the first was "lost": nothing stored twice
    assert send([2, 3, 4, 5]) == 2
    with sqlite3.connect(shared.cp.db) as conn:
        seqs = [
            r[0]
            for r in conn.execute(
                "SELECT seq FROM events WHERE agent_id = ? ORDER BY seq", (agent_id,)
            )
        ]
    assert seqs == [1, 2, 3, 4, 5]

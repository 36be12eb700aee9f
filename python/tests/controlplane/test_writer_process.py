"""The heartbeat writer in a process of its own keeps the thread writer's contract.

Real child processes, real SQLite files. The same heartbeats go through the
thread (`HeartbeatWriter`) and the process (`ProcessWriter`): the answers, the
views /metrics reads and the stored rows must be the same. Over real gRPC, a
heartbeat the control plane acknowledged is in the database after the server
process is killed, and /metrics showed it before; a commit stuck on a hung
sibling's lock turns /health unhealthy from the child's own report, and back.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from sennet.common.retry import retry
from sennet.controlplane.fleet import MAX_TOTAL, AgentView, Fleet
from sennet.controlplane.refusals import Code, RequestError
from sennet.controlplane.store import Store
from sennet.controlplane.writer import HeartbeatWriter, Writer
from sennet.controlplane.writer_child import pack, unpack
from sennet.controlplane.writer_process import ProcessWriter
from sennet.proto.contract import HEARTBEAT
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.controlplane import create_bootstrap_token, heartbeat_request, running
from sennet.testing.scrape import sample
from sennet.testing.telemetry import full_request

AGENTS = ("00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b")


def beats() -> list[pb.HeartbeatRequest]:
    """Two agents, counters rising, one reset (agent restart), one with every part."""
    ev = pb.Event(ts_unix_ns=1, ifindex=7, direction=pb.DIRECTION_RX, kind="land")
    out = []
    for n, rx in enumerate((10, 30, 5, 45)):
        for agent_id in AGENTS:
            recent = [ev] * (n % 3)
            out.append(
                heartbeat_request(agent_id, rx=(rx, rx * 64), events={"land": n}, recent=recent)
            )
    out.append(full_request(AGENTS[0]))
    return out


def answers(writer: Writer, reqs: list[pb.HeartbeatRequest]) -> list[object]:
    """Each heartbeat's answer (events stored) or refusal (code, message), in order."""
    futures: list[Future[pb.HeartbeatResponse]] = []
    for n, req in enumerate(reqs):
        fut: Future[pb.HeartbeatResponse] = Future()
        writer.enqueue(req, fut, received_at=1_700_000_000.0 + n)
        futures.append(fut)
    out: list[object] = []
    for fut in futures:
        try:
            out.append(fut.result(30).events_stored)
        except RequestError as err:
            out.append((err.code, err.message))
    return out


def comparable(view: AgentView | None) -> tuple[object, ...]:
    assert view is not None
    return (view.heartbeats, view.resets, view.last_heartbeat, dict(view.series), view.telemetry)


def stored(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT key, agent_id, last_raw, total FROM series"))


def run_writer(
    kind: type[Writer], db: Path, reqs: list[pb.HeartbeatRequest]
) -> tuple[list[object], Fleet]:
    store = Store(db)
    store.migrate()
    with sqlite3.connect(db) as conn:
        for agent_id in AGENTS:
            conn.execute(
                "INSERT INTO agents (agent_id, registered_at) VALUES (?, 1.0)", (agent_id,)
            )
    fleet = Fleet(store.load_fleet())
    writer: Writer = kind(store, fleet, retention_s=86400.0)  # type: ignore[call-arg]
    writer.start()
    try:
        return answers(writer, reqs), fleet
    finally:
        writer.stop()
        store.close()


def test_the_process_answers_and_stores_exactly_what_the_thread_does(tmp_path: Path) -> None:
    reqs = beats()
    by_thread, thread_fleet = run_writer(HeartbeatWriter, tmp_path / "thread.db", reqs)
    by_process, process_fleet = run_writer(ProcessWriter, tmp_path / "process.db", reqs)
    assert by_process == by_thread == [len(r.recent_events) for r in reqs]
    assert by_thread[:8] == [0, 0, 1, 1, 2, 2, 0, 0]
    for agent_id in AGENTS:
        assert comparable(process_fleet.get(agent_id)) == comparable(thread_fleet.get(agent_id))
    view = process_fleet.get(AGENTS[1])
    assert view is not None and view.heartbeats == 4 and view.resets == 2  # rx_packets, rx_bytes
    assert stored(tmp_path / "process.db") == stored(tmp_path / "thread.db") != []


def test_a_heartbeat_the_writer_refuses_comes_back_with_the_threads_message(
    tmp_path: Path,
) -> None:
    agent_id = AGENTS[0]
    reqs = [
        heartbeat_request(agent_id, rx=(MAX_TOTAL, 1)),
        heartbeat_request(agent_id, rx=(5, 2)),  # a reset: the total would pass 2^63-1
        heartbeat_request(agent_id, rx=(MAX_TOTAL, 3)),  # back up: allowed again
    ]
    by_thread, _ = run_writer(HeartbeatWriter, tmp_path / "thread.db", reqs)
    by_process, fleet = run_writer(ProcessWriter, tmp_path / "process.db", reqs)
    assert by_process == by_thread
    refused = by_process[1]
    assert isinstance(refused, tuple) and refused[0] is Code.INVALID_ARGUMENT
    assert "rx_packets" in refused[1], refused
    view = fleet.get(agent_id)
    assert view is not None and view.heartbeats == 2  # the refused one left no trace


def test_a_dead_writer_process_refuses_heartbeats_and_says_it_is_not_alive(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "cp.db")
    store.migrate()
    with sqlite3.connect(store.path) as conn:
        conn.execute("INSERT INTO agents (agent_id, registered_at) VALUES (?, 1.0)", (AGENTS[0],))
    writer = ProcessWriter(store, Fleet(), retention_s=86400.0)
    writer.start()
    try:
        assert writer.submit(heartbeat_request(AGENTS[0], rx=(1, 64))).result(30).events_stored == 0
        (child,) = children()  # the writer process, started by this test alone
        os.kill(child, signal.SIGKILL)
        retry(lambda last: True if not writer.alive() else None, 10.0, what="writer not alive")
        refused = writer.submit(heartbeat_request(AGENTS[0], rx=(2, 128)))
        with pytest.raises(RequestError) as err:
            refused.result(5)
        assert err.value.code is Code.UNAVAILABLE
        assert err.value.message == "the store writer process is not running"
    finally:
        writer.stop()
        store.close()


def children() -> list[int]:
    """This process's child processes, whichever of its threads started them."""
    return [
        int(pid)
        for task in Path("/proc/self/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]


def test_the_wire_gives_back_every_frame_and_names_a_truncated_one() -> None:
    items = [(1, 1.5, b"abc"), (2, 2.5, b""), (2**63, 0.0, bytes(range(256)))]
    assert unpack(pack(items)) == items
    with pytest.raises(ValueError, match="frame 1 runs past the message at byte 20"):
        unpack(pack(items)[:22])


def test_an_acknowledged_heartbeat_is_on_disk_and_in_metrics_when_the_server_is_killed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--writer-process"]) as cp:
        agent_id, token = cp.register(bootstrap)
        for n in range(1, 6):
            assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(n * 7, n * 700))) == (
                grpc.StatusCode.OK,
                "",
            )
        labels = {"agent": agent_id, "interface": "eth1", "direction": "rx"}
        assert sample(cp.samples(), "sennet_interface_packets_total", **labels) == 35
        assert cp.stop(signal.SIGKILL) == -signal.SIGKILL
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT count(*), max(s.rx_packets) FROM interface_samples s "
            "JOIN heartbeats h USING (heartbeat_id) WHERE h.agent_id = ?",
            (agent_id,),
        ).fetchone()
    assert rows == (5, 35)


def test_health_reports_the_childs_commit_stuck_on_a_hung_sibling_and_its_recovery(
    tmp_path: Path,
) -> None:
    """The writers' file lock held by a hung sibling: the child's commit waits for good, and
    /health must say so from the child's own figure (its reports go on meanwhile)."""
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--writer-process"]) as cp, ThreadPoolExecutor(1) as pool:
        agent_id, token = cp.register(bootstrap)
        fd = os.open(Store(db).writer_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                req = heartbeat_request(agent_id, rx=(1, 60)).SerializeToString()
                stuck = pool.submit(cp.call_full, HEARTBEAT, req, token, 40.0)
                retry(
                    lambda last: True if cp.get("/health")[0] == 503 else None,
                    25.0,
                    interval=0.2,
                    what="/health 503",
                )
                writer = json.loads(cp.get("/health")[1])["writer"]
                assert writer["alive"] is True and writer["last_error"] is None, writer
                assert writer["stalled_s"] >= 15, writer
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            assert stuck.result().code == grpc.StatusCode.OK  # it was only late
        finally:
            os.close(fd)
        retry(
            lambda last: True if cp.get("/health")[0] == 200 else None,
            5.0,
            interval=0.1,
            what="/health 200 again",
        )
        assert cp.scalar("SELECT count(*) FROM heartbeats WHERE agent_id = ?", agent_id) == 1

"""Faults the control plane must survive without losing an acknowledged heartbeat.

Real processes and a real filesystem: the database lives on a small tmpfs the
test mounts and fills, and the process is killed with SIGKILL while heartbeats
are in flight. The oracle is the database file itself, read after the fact.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sennet.common.proc import run
from sennet.proto.contract import HEARTBEAT
from sennet.testing.controlplane import (
    create_bootstrap_token,
    heartbeat_request,
    running,
)

pytestmark = pytest.mark.integration
OK = (grpc.StatusCode.OK, "")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    try:
        yield path
    finally:
        run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write until the filesystem refuses (ENOSPC); the filler file is returned for removal."""
    filler = directory / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def stored_raw(db: Path, agent_id: str) -> int:
    """The last rx_packets reading the database holds for an agent (0 if none)."""
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT max(s.rx_packets) FROM interface_samples s "
            "JOIN heartbeats h USING (heartbeat_id) WHERE h.agent_id = ?",
            (agent_id,),
        ).fetchone()
    return int(row[0] or 0)


# the writer as a thread of the server, and as a process of its own (writer_process.py)
WRITERS = pytest.mark.parametrize("writer", [[], ["--writer-process"]], ids=["thread", "process"])


@WRITERS
def test_a_full_disk_refuses_heartbeats_loses_nothing_and_recovers_without_restart(
    root: None, tmp_path: Path, writer: list[str]
) -> None:
    with small_tmpfs(tmp_path / "small", "4m") as small:
        db = small / "cp.db"
        bootstrap = create_bootstrap_token(db)
        with running(db, tmp_path, writer) as cp:
            agent_id, token = cp.register(bootstrap)
            assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(1, 64))) == OK
            filler = fill(small)
            refused = cp.heartbeat(token, heartbeat_request(agent_id, rx=(2, 128)))
            assert refused[0] == grpc.StatusCode.UNAVAILABLE, refused
            assert cp.get("/health")[0] == 503  # the writer is failing and says so
            filler.unlink()
            assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(3, 192))) == OK
            assert cp.get("/health")[0] == 200
            assert cp.stop() == 0, cp.log()
        assert stored_raw(db, agent_id) == 3


@WRITERS
def test_every_acknowledged_heartbeat_survives_a_kill_under_load(
    tmp_path: Path, writer: list[str]
) -> None:
    """Four agents beat as fast as they can; SIGKILL mid-flight; each agent's highest
    acknowledged reading must be in the database after the restart."""
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, writer) as cp:
        agents = [cp.register(bootstrap) for _ in range(4)]
        acked = {agent_id: 0 for agent_id, _ in agents}
        stop = threading.Event()

        def beat(agent_id: str, token: str) -> None:
            with grpc.insecure_channel(cp.target) as channel:
                call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    HEARTBEAT.path
                )
                n = 0
                while not stop.is_set():
                    n += 1
                    req = heartbeat_request(agent_id, rx=(n, 64 * n)).SerializeToString()
                    try:
                        call(req, timeout=5, metadata=(("authorization", f"Bearer {token}"),))
                    except grpc.RpcError:
                        return  # the process died under us: this one was never acknowledged
                    acked[agent_id] = n

        threads = [threading.Thread(target=beat, args=a) for a in agents]
        for t in threads:
            t.start()
        cp.wait_until("every agent acknowledged", lambda: min(acked.values()) >= 20, timeout=30)
        assert cp.stop(signal.SIGKILL) == -signal.SIGKILL
        stop.set()
        for t in threads:
            t.join(10)
        cp.start()  # same database, same ports: the restart an operator would do
        for agent_id, n in acked.items():
            assert stored_raw(db, agent_id) >= n > 0, (agent_id, n)
        assert cp.stop() == 0, cp.log()

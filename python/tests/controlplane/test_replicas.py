"""Replicas on one database: several `sennet-controlplane serve` processes, one SQLite file.

Before the migration re-read the schema version under the write lock, two
replicas started together on a new file both ran migration 1 and the later
one died on "table tokens already exists" (4 of 6 tries on this machine).
"""

from __future__ import annotations

import threading
from pathlib import Path

from sennet.controlplane.schema import SCHEMA_VERSION
from sennet.testing.controlplane import ControlPlane, heartbeat_request

TRIES = 5


def _start(cp: ControlPlane, errors: list[BaseException]) -> None:
    try:
        cp.start()
    except BaseException as exc:  # reported by the test, with the process's own words
        errors.append(exc)


def test_replicas_started_together_on_a_new_database_all_serve_and_migrate_it_once(
    tmp_path: Path,
) -> None:
    for attempt in range(TRIES):
        workdir = tmp_path / str(attempt)
        workdir.mkdir()
        cps = [ControlPlane(workdir / "cp.db", workdir, name=f"cp{n}") for n in range(3)]
        errors: list[BaseException] = []

        threads = [threading.Thread(target=_start, args=(cp, errors)) for cp in cps]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == [], f"try {attempt}: {errors}"
            assert cps[0].scalar("PRAGMA user_version") == SCHEMA_VERSION
            # Each one serves the same database: an agent enrolled at one is known at all.
            bootstrap = cps[0].create_token()
            agent_id, token = cps[1].register(bootstrap)
            for n, cp in enumerate(cps):
                code, details = cp.heartbeat(token, heartbeat_request(agent_id, rx=(n + 1, 60)))
                assert code.name == "OK", details
            assert cps[2].scalar("SELECT heartbeats FROM agents WHERE agent_id = ?", agent_id) == 3
        finally:
            for cp in cps:
                cp.process.kill()

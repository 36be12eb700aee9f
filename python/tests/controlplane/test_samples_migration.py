"""Migration 6: the sample tables' rows packed onto their heartbeat, read back unchanged.

A version-5 database (real SQLite file) is filled with rows in every sample
table and in `events`, including names and values that need JSON escaping and a heartbeat
that carries no flow, DNS or TCP part; after the migration the views of the
same names give back exactly the rows the tables held, and retention still
deletes them with their heartbeat.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from sennet.common.errors import UserError
from sennet.controlplane.schema import MIGRATIONS
from sennet.controlplane.store import Store

U63 = (1 << 63) - 1

# table -> the rows written at version 5 (heartbeat 1 has every part, 2 only interfaces/kinds)
ROWS: dict[str, list[tuple[object, ...]]] = {
    "interface_samples": [
        (1, "eth0", 2, 10, 640, 9, 500),
        (1, 'we"ird\\if', 3, U63, U63, 0, 0),
        (2, "eth0", 2, 11, 700, 9, 500),
    ],
    "kind_samples": [(1, "land", 4, 0), (1, "tcp_xmas", 1, 2), (2, "land", 5, 0)],
    "flow_samples": [(1, 37, 65536, 1000, 900, 63, 29)],
    "talkers": [
        (1, 1, "eth1", "rx", 4, 6, "10.0.0.1", "10.0.0.2", 40000, 443, 0, 120, 150000, 27),
        (1, 2, "eth1", "tx", 6, 17, "fd00::1", "fd00::53", 5353, 53, 42, 9, 1206, 0),
    ],
    "microbursts": [(1, "eth1", "rx", 1, 17, 25500), (1, "eth1", "tx", 10, 12, 1800)],
    "dns_samples": [(1, 4, 6)],
    "dns_counts": [(1, "qtype", "A", 40), (1, "rcode", "NOERROR", 60), (1, "rcode", "other", 0)],
    "dns_names": [
        (1, "failing", 1, "missing.example", 5),
        (1, "queried", 1, "example.com", 25),
        (1, "queried", 2, 'we"ird\\name.test', 9),
    ],
    "tcp_samples": [(1, 8, 3, 2, 14, 1, 0)],
    "histogram_samples": [
        (1, "dns_latency", "[0.001, 0.01]", "[3, 4, 0]", 0.0123),
        (1, "tcp_syn_rtt", "[0.0005]", "[1, 0]", 1e-05),
    ],
}


# events at version 5 (event_id given): heartbeat 1 has two, heartbeat 2 one
EVENTS = [
    (7, 1, "a", 1_700_000_000_000_000_001, 3, "rx", "land", 60, 4, 6, 1, 1, "10.0.0.1",
     "10.0.0.1", 2, 0, 2048, 0),
    (8, 1, "a", 1_700_000_000_000_000_002, 3, "tx", "tcp_xmas", 54, 6, 6, 1234, 80, "fd00::1",
     "fd00::2", 0x29, 1, 0x86DD, 9),
    (9, 2, "a", U63, 4, "rx", "large_packet", 9000, 0, 0, 0, 0, "", "", 0, 2, 0, 10),
]  # fmt: skip


def version_5(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        for migration in MIGRATIONS[:5]:
            conn.executescript(migration)
        conn.execute("PRAGMA user_version = 5")
        conn.execute("INSERT INTO agents (agent_id, registered_at) VALUES ('a', 1.0)")
        conn.execute("INSERT INTO heartbeats VALUES (1, 'a', 2.0, 3.0, 'v', 'k', 0)")
        conn.execute("INSERT INTO heartbeats VALUES (2, 'a', 12.0, 13.0, 'v', 'k', 0)")
        for table, rows in ROWS.items():
            marks = ", ".join("?" * len(rows[0]))
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        conn.executemany(f"INSERT INTO events VALUES ({', '.join('?' * 18)})", EVENTS)


def read_all(db: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(db) as conn:
        out = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in ROWS}
        # every column but event_id, in event_id order (the ids are renumbered, not reordered)
        out["events"] = [row[1:] for row in conn.execute("SELECT * FROM events ORDER BY event_id")]
        return out


def test_a_version_5_database_keeps_every_sample_row_exactly(tmp_path: Path) -> None:
    db = tmp_path / "v5.db"
    version_5(db)
    before = read_all(db)
    assert before == {t: sorted(rows) for t, rows in ROWS.items()} | {
        "events": [e[1:] for e in EVENTS]
    }
    assert Store(db).migrate() == 7
    assert read_all(db) == before
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT event_id FROM events ORDER BY event_id")]
    assert ids == [1 * 1024 + 0, 1 * 1024 + 1, 2 * 1024 + 0]
    with sqlite3.connect(db) as conn:
        packed = dict(conn.execute("SELECT heartbeat_id, samples FROM heartbeats"))
    # the heartbeat without flow, DNS or TCP parts has none in its packed text either
    assert json.loads(packed[2]) == {
        "i": [["eth0", 2, 11, 700, 9, 500]],
        "k": [["land", 5, 0]],
        "e": [[U63, 4, "rx", "large_packet", 9000, 0, 0, 0, 0, "", "", 0, 2, 0, 10]],
    }
    keys = {"i", "k", "e", "f", "t", "m", "d", "dc", "n", "c", "h"}
    assert set(json.loads(packed[1])) == keys


def test_retention_deletes_the_packed_samples_with_their_heartbeat(tmp_path: Path) -> None:
    db = tmp_path / "v5.db"
    version_5(db)
    store = Store(db)
    store.migrate()
    conn = store.connect()
    try:
        assert store.prune(conn, older_than=10.0) == 1  # heartbeat 1 (received at 2.0)
    finally:
        conn.close()
    after = read_all(db)
    assert after == {t: sorted(r for r in rows if r[0] == 2) for t, rows in ROWS.items()} | {
        "events": [EVENTS[2][1:]]
    }
    assert after["interface_samples"] == [(2, "eth0", 2, 11, 700, 9, 500)]


def test_a_sqlite_without_the_json_operators_is_refused_naming_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An old libsqlite3 cannot be loaded beside this one: only its version number is faked.
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 37, 2))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.37.2")
    db = tmp_path / "new.db"
    with pytest.raises(UserError) as err:
        Store(db).migrate()
    assert err.value.message == (
        "SQLite 3.37.2 is too old for the control plane's schema: it needs 3.38.0 or newer"
        " (JSON functions, `->>`)"
    )
    assert not db.exists()  # refused before anything was created


@pytest.mark.parametrize("view", [*ROWS, "events"])
def test_a_view_reads_one_heartbeat_by_rowid_not_by_scanning_them_all(
    tmp_path: Path, view: str
) -> None:
    # the writer's reload reads the latest heartbeat of one agent through these views
    db = tmp_path / "new.db"
    Store(db).migrate()
    latest = "SELECT max(heartbeat_id) FROM heartbeats WHERE agent_id = ?"
    with sqlite3.connect(db) as conn:
        plan = [
            row[3]
            for row in conn.execute(
                f"EXPLAIN QUERY PLAN SELECT * FROM {view} WHERE heartbeat_id IN ({latest})",
                ("a",),
            )
        ]
    assert any("USING INTEGER PRIMARY KEY (rowid=?)" in step for step in plan), plan
    assert not [step for step in plan if step.startswith("SCAN") and "VIRTUAL TABLE" not in step]

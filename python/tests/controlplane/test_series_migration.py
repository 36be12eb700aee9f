"""Migration 7: each agent's series totals packed into one row, read back unchanged.

A version-6 database (real SQLite file) holds `series` rows for two agents,
with names that need JSON escaping, a name holding ':' and totals at 2^63-1;
after the migration the `series` view gives back exactly those rows, the
control plane loads the same totals, and a heartbeat written afterwards
continues them and shows through the view too.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from sennet.controlplane import store_series
from sennet.controlplane.fleet import AgentView, Series, SeriesKey
from sennet.controlplane.schema import MIGRATIONS
from sennet.controlplane.store import Store
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

U63 = (1 << 63) - 1

SERIES = [
    ("a", "agent_dropped:", 0, 0),
    ("a", "events:land", 4, 9),
    ("a", "rx_packets:eth0", 10, 25),
    ("a", 'rx_bytes:we"ird\\if', U63, U63),
    ("a", "dns_queries_total:name:with:colons", 3, 3),
    ("b", "rx_packets:eth0", 1, 1),
]


def version_6(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        for migration in MIGRATIONS[:6]:
            conn.executescript(migration)
        conn.execute("PRAGMA user_version = 6")
        for agent_id in ("a", "b", "c"):  # c has no series
            conn.execute(
                "INSERT INTO agents (agent_id, registered_at) VALUES (?, 1.0)", (agent_id,)
            )
        conn.executemany("INSERT INTO series VALUES (?, ?, ?, ?)", SERIES)


def series_rows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT agent_id, key, last_raw, total FROM series"))


def test_a_version_6_database_keeps_every_series_row_exactly(tmp_path: Path) -> None:
    db = tmp_path / "v6.db"
    version_6(db)
    assert series_rows(db) == sorted(SERIES)
    assert Store(db).migrate() == 7
    assert series_rows(db) == sorted(SERIES)
    with sqlite3.connect(db) as conn:
        packed = sorted(conn.execute("SELECT agent_id, keys, totals FROM series_totals"))
    assert packed == [
        (
            "a",
            '["agent_dropped:","dns_queries_total:name:with:colons","events:land",'
            '"rx_bytes:we\\"ird\\\\if","rx_packets:eth0"]',
            f"[0,0,3,3,4,9,{U63},{U63},10,25]",
        ),
        ("b", '["rx_packets:eth0"]', "[1,1]"),
    ]


def test_the_control_plane_loads_the_migrated_totals(tmp_path: Path) -> None:
    db = tmp_path / "v6.db"
    version_6(db)
    store = Store(db)
    store.migrate()
    try:
        views = {v.agent_id: v for v in store.load_fleet()}
        assert dict(views["a"].series) == {
            SeriesKey.from_stored(key): Series(raw, total)
            for aid, key, raw, total in SERIES
            if aid == "a"
        }
        assert dict(views["b"].series) == {SeriesKey("rx_packets", "eth0"): Series(1, 1)}
        assert dict(views["c"].series) == {}
        conn = store.connect()
        try:
            one = store.load_agent(conn, "a")
        finally:
            conn.close()
        assert one is not None and one.series == views["a"].series
    finally:
        store.close()


def test_a_heartbeat_after_the_migration_continues_the_totals(tmp_path: Path) -> None:
    db = tmp_path / "v6.db"
    version_6(db)
    store = Store(db)
    store.migrate()
    try:
        conn = store.connect()
        try:
            view = store.load_agent(conn, "b")
            assert view is not None
            req = pb.HeartbeatRequest(agent_id="b", agent_version="v", kernel_version="k")
            req.interfaces.add(name="eth0", ifindex=2, rx_packets=5, rx_bytes=640)
            now = time.time()
            new, changed = view.apply(req, now)
            conn.execute("BEGIN IMMEDIATE")
            store.insert_heartbeat(conn, req, now, new, changed)
            conn.execute("COMMIT")
            assert store.load_agent(conn, "b") == new
        finally:
            conn.close()
    finally:
        store.close()
    rows = [r for r in series_rows(db) if r[0] == "b"]
    assert rows == [
        ("b", "agent_dropped:", 0, 0),
        ("b", "rx_bytes:eth0", 640, 640),
        ("b", "rx_packets:eth0", 5, 5),  # 1 -> 5: +4 on the migrated total of 1
        ("b", "tx_bytes:eth0", 0, 0),
        ("b", "tx_packets:eth0", 0, 0),
    ]
    assert new.series[SeriesKey("rx_packets", "eth0")] == Series(5, 5)


def test_a_packed_row_whose_keys_and_totals_disagree_is_refused_naming_it() -> None:
    with pytest.raises(sqlite3.DataError) as err:
        store_series.unpack("agent a", '["rx_packets:eth0","events:land"]', "[1,1,2]")
    assert str(err.value) == "series_totals of agent a: 2 keys but 3 values (want 2 each)"


def test_pack_and_unpack_are_inverse_in_order() -> None:
    series = {
        SeriesKey("rx_packets", 'we"ird'): Series(U63, U63),
        SeriesKey("events", "a:b"): Series(0, 7),
    }
    keys, totals = store_series.pack(series)
    assert (keys, totals) == ('["rx_packets:we\\"ird","events:a:b"]', f"[{U63}, {U63}, 0, 7]")
    assert json.loads(totals) == [U63, U63, 0, 7]
    back = store_series.unpack("x", keys, totals)
    assert list(back.items()) == list(series.items())
    assert AgentView("x", series=back).series == series

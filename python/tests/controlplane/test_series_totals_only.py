"""A heartbeat that gained no series rewrites only the totals of the agent's packed row.

The writer (real thread, real SQLite file) stores an agent's series as one
row of keys and totals (store_series.py). When a heartbeat adds no series,
the keys are the ones already stored, so only `totals` is rewritten; a
heartbeat that adds one writes the whole row again. The statements the
writer's connection ran show which happened, and the `series` view shows
the totals are exact either way.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sennet.controlplane.fleet import Fleet
from sennet.controlplane.store import Store
from sennet.controlplane.writer import HeartbeatWriter
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb


class TracedStore(Store):
    """The real store; every connection it opens records the SQL it runs."""

    def __init__(self, db: Path) -> None:
        super().__init__(db)
        self.statements: list[str] = []

    def connect(self, *, create: bool = False) -> sqlite3.Connection:
        conn = super().connect(create=create)
        conn.set_trace_callback(self.statements.append)
        return conn


def heartbeat(*interfaces: tuple[str, int, int]) -> pb.HeartbeatRequest:
    req = pb.HeartbeatRequest(agent_id="a", agent_version="v", kernel_version="k")
    for n, (name, packets, octets) in enumerate(interfaces):
        req.interfaces.add(name=name, ifindex=2 + n, rx_packets=packets, rx_bytes=octets)
    return req


def series_rows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT key, last_raw, total FROM series"))


def writes(store: TracedStore) -> list[str]:
    """The series_totals writes so far, by kind, in order."""
    kinds = []
    for sql in store.statements:
        if sql.startswith("INSERT INTO series_totals"):
            kinds.append("whole row")
        elif sql.startswith("UPDATE series_totals SET totals"):
            kinds.append("totals only")
    return kinds


def test_only_the_totals_are_rewritten_until_the_agent_gains_a_series(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    store = TracedStore(db)
    store.migrate()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO agents (agent_id, registered_at) VALUES ('a', 1.0)")
    writer = HeartbeatWriter(store, Fleet(store.load_fleet()), retention_s=86400.0)
    writer.start()
    try:
        writer.submit(heartbeat(("eth0", 5, 640))).result(10)
        assert writes(store) == ["whole row"]
        writer.submit(heartbeat(("eth0", 7, 700))).result(10)
        assert writes(store) == ["whole row", "totals only"]
        assert series_rows(db) == [
            ("agent_dropped:", 0, 0),
            ("rx_bytes:eth0", 700, 700),
            ("rx_packets:eth0", 7, 7),
            ("tx_bytes:eth0", 0, 0),
            ("tx_packets:eth0", 0, 0),
        ]
        writer.submit(heartbeat(("eth0", 9, 900), ("eth1", 2, 128))).result(10)
        assert writes(store) == ["whole row", "totals only", "whole row"]
        writer.submit(heartbeat(("eth0", 3, 300), ("eth1", 4, 256))).result(10)  # eth0 reset
        assert writes(store) == ["whole row", "totals only", "whole row", "totals only"]
    finally:
        writer.stop()
        store.close()
    assert series_rows(db) == [
        ("agent_dropped:", 0, 0),
        ("rx_bytes:eth0", 300, 1200),
        ("rx_bytes:eth1", 256, 256),
        ("rx_packets:eth0", 3, 12),
        ("rx_packets:eth1", 4, 4),
        ("tx_bytes:eth0", 0, 0),
        ("tx_bytes:eth1", 0, 0),
        ("tx_packets:eth0", 0, 0),
        ("tx_packets:eth1", 0, 0),
    ]
    reloaded = Store(db)
    try:
        view = reloaded.load_fleet()
    finally:
        reloaded.close()
    assert [v.agent_id for v in view] == ["a"]
    assert view[0].heartbeats == 4

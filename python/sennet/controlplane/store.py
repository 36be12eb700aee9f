"""SQLite persistence: connections, migrations, heartbeats, retention.

Tokens, enrolment and agent standing live in `identity.py`, on these connections.

WAL mode lets /health, token checks and the CLI read while the writer thread
commits. `synchronous=FULL` makes each commit durable (the WAL is fsynced)
before a heartbeat is acknowledged; the writer amortises that fsync over a
batch of concurrent heartbeats (group commit), see `writer.py`.

Series keys are `fleet.SeriesKey` values everywhere else; `store_series.py`
alone converts them to and from the stored text (`rx_packets:eth0`) and keeps
each agent's totals in one packed row.

Connections are per thread (sqlite3 objects must not cross threads), held in a
`threading.local` owned by the `Store` instance.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sennet.common.errors import UserError
from sennet.controlplane import image_report, store_insights, store_samples, store_series
from sennet.controlplane.fleet import AgentView, Series, SeriesKey
from sennet.controlplane.fleet_insights import Telemetry
from sennet.controlplane.schema import MIGRATIONS, SCHEMA_VERSION
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

# the packed samples and their views (schema migration 6) use the JSON functions and `->>`
MIN_SQLITE = (3, 38, 0)


class Store:
    """One SQLite database file; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock_fd: int | None = None  # used by the single writer thread only

    # -- connections ------------------------------------------------------------------

    def connect(self, *, create: bool = False) -> sqlite3.Connection:
        """A new autocommit connection with the pragmas every connection needs."""
        mode = "rwc" if create else "rw"
        try:
            conn = sqlite3.connect(
                f"file:{quote(str(self.path))}?mode={mode}",
                uri=True,
                isolation_level=None,
                check_same_thread=True,
                timeout=10.0,
            )
        except sqlite3.OperationalError as exc:
            raise UserError(f"cannot open database {self.path}: {exc}") from exc
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise UserError(f"cannot use database {self.path}: {exc}") from exc
        return conn

    @property
    def writer_lock_path(self) -> Path:
        """The side file whose flock orders writers of this database across processes."""
        return self.path.with_name(self.path.name + ".writer-lock")

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Exclusive among control-plane writers on this database (flock on a side file)."""
        fd = self._lock_fd
        if fd is None:
            fd = os.open(self.writer_lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._lock_fd = fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
        return conn

    def local(self) -> sqlite3.Connection:
        """This thread's connection, for modules that keep their own tables here (`identity`)."""
        return self._conn()

    def migrate(self) -> int:
        """Create or upgrade the schema; return the version now in place."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise UserError(
                f"SQLite {sqlite3.sqlite_version} is too old for the control plane's schema: "
                f"it needs {'.'.join(map(str, MIN_SQLITE))} or newer (JSON functions, `->>`)",
                hint="run the control plane on Debian 12 or newer, or with a newer libsqlite3",
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the database directory {self.path.parent}: {exc.strerror}"
            ) from exc
        conn = self.connect(create=True)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise UserError(f"{self.path}: cannot enable WAL (journal_mode is {mode})")
            # Replicas may start together on one file: each migration step re-reads the
            # version under the write lock, so a step another process applied meanwhile
            # is skipped instead of failing on "table already exists".
            while True:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                    if version > SCHEMA_VERSION:
                        raise UserError(
                            f"{self.path} has schema version {version}, newer than this "
                            f"control plane's {SCHEMA_VERSION}",
                            hint="run the newer control plane, or point --db at another file",
                        )
                    if version == SCHEMA_VERSION:
                        conn.execute("COMMIT")
                        return SCHEMA_VERSION
                    for statement in MIGRATIONS[version].split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {version + 1}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.DatabaseError as exc:
            raise UserError(f"cannot use database {self.path}: {exc}") from exc
        finally:
            conn.close()

    def probe(self) -> int:
        """Open the file afresh and read the schema version; raises sqlite3.Error if unusable."""
        conn = sqlite3.connect(f"file:{quote(str(self.path))}?mode=rw", uri=True, timeout=2.0)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute("SELECT count(*) FROM agents").fetchone()
            if version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version}, want {SCHEMA_VERSION}")
            return version
        finally:
            conn.close()

    # -- heartbeats -------------------------------------------------------------------

    def insert_heartbeat(
        self,
        conn: sqlite3.Connection,
        req: pb.HeartbeatRequest,
        received_at: float,
        view: AgentView,
        changed: dict[SeriesKey, Series],
        keys_stored: bool = False,
    ) -> int:
        """Write one heartbeat inside the caller's transaction; return the events stored.

        `keys_stored`: the agent's stored series row already has `view`'s keys, in
        order (`store_series.save`).
        """
        events = self._new_events(conn, req, received_at)
        cur = conn.execute(
            "INSERT INTO heartbeats (agent_id, received_at, uptime_seconds, agent_version,"
            " kernel_version, events_dropped_by_agent, samples) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                req.agent_id,
                received_at,
                req.uptime_seconds,
                req.agent_version,
                req.kernel_version,
                req.events_dropped_by_agent,
                store_samples.pack(req, events),
            ),
        )
        if cur.lastrowid is None:
            raise sqlite3.IntegrityError("heartbeat row has no id")
        if changed:  # every series in one row (store_series.py), rewritten when one moved
            store_series.save(conn, req.agent_id, view.series, keys_stored)
        cur = conn.execute(
            "UPDATE agents SET agent_version = ?, kernel_version = ?, last_heartbeat_at = ?,"
            " uptime_seconds = ?, heartbeats = ?, resets = ? WHERE agent_id = ?",
            (
                req.agent_version,
                req.kernel_version,
                received_at,
                req.uptime_seconds,
                view.heartbeats,
                view.resets,
                req.agent_id,
            ),
        )
        if cur.rowcount != 1:
            raise sqlite3.IntegrityError(f"agent {req.agent_id} is not enrolled")
        if req.HasField("image") or req.HasField("last_update"):
            image_report.save(conn, req.agent_id, view.image)
        return len(events)

    @staticmethod
    def _new_events(
        conn: sqlite3.Connection, req: pb.HeartbeatRequest, received_at: float
    ) -> list[pb.Event]:
        """The events not stored before: a numbered stream skips what it already delivered."""
        if not req.event_stream or not req.recent_events:
            return list(req.recent_events)
        row = conn.execute(
            "SELECT max_seq FROM event_streams WHERE agent_id = ? AND stream = ?",
            (req.agent_id, req.event_stream),
        ).fetchone()
        seen = int(row[0]) if row else 0
        fresh = [e for e in req.recent_events if e.seq > seen]
        conn.execute(
            "INSERT INTO event_streams VALUES (?, ?, ?, ?) ON CONFLICT (agent_id, stream)"
            " DO UPDATE SET max_seq = max(max_seq, excluded.max_seq),"
            " updated_at = excluded.updated_at",
            (req.agent_id, req.event_stream, req.recent_events[-1].seq, received_at),
        )
        return fresh

    def probe_write(self, conn: sqlite3.Connection) -> None:
        """A write shaped like a heartbeat's that leaves no trace; raises sqlite3.Error on failure.

        It takes the write lock, inserts a heartbeat row for the first enrolled
        agent and deletes it in the same transaction, then commits: the pages
        it touched go through the WAL and fsync like a real heartbeat's, so a
        locked, full or unwritable database fails here too, and nothing is
        visible afterwards (with no agent enrolled it only takes the lock).
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                "INSERT INTO heartbeats (agent_id, received_at, uptime_seconds, agent_version,"
                " kernel_version, events_dropped_by_agent)"
                " SELECT agent_id, 0, 0, '', '', 0 FROM agents ORDER BY rowid LIMIT 1"
            )
            if cur.rowcount == 1:
                conn.execute("DELETE FROM heartbeats WHERE heartbeat_id = ?", (cur.lastrowid,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def prune(self, conn: sqlite3.Connection, older_than: float) -> int:
        """Delete heartbeats (and their samples and events) received before `older_than`."""
        cur = conn.execute("DELETE FROM heartbeats WHERE received_at < ?", (older_than,))
        conn.execute("DELETE FROM event_streams WHERE updated_at < ?", (older_than,))
        return cur.rowcount

    _AGENT_COLUMNS = (
        "SELECT agent_id, hostname, agent_version, kernel_version, registered_at,"
        " last_heartbeat_at, uptime_seconds, heartbeats, resets FROM agents"
    )

    @staticmethod
    def _view(
        row: tuple[Any, ...],
        series: dict[SeriesKey, Series],
        telemetry: Telemetry | None = None,
        image: image_report.ImageReport | None = None,
    ) -> AgentView:
        return AgentView(
            agent_id=row[0],
            hostname=row[1],
            agent_version=row[2],
            kernel_version=row[3],
            registered_at=row[4],
            last_heartbeat=row[5],
            uptime_seconds=row[6],
            heartbeats=row[7],
            resets=row[8],
            series=series,
            telemetry=telemetry,
            image=image,
        )

    def load_fleet(self) -> list[AgentView]:
        """Every enrolled agent with its stored totals, to rebuild state after a restart."""
        conn = self._conn()
        series = store_series.load(conn)
        telemetry = store_insights.latest_telemetry(conn)
        images = image_report.load(conn)
        return [
            self._view(row, series.get(row[0], {}), telemetry.get(row[0]), images.get(row[0]))
            for row in conn.execute(self._AGENT_COLUMNS)
        ]

    def heartbeat_count(self, conn: sqlite3.Connection, agent_id: str) -> int | None:
        row = conn.execute(
            "SELECT heartbeats FROM agents WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def heartbeat_counts(self, conn: sqlite3.Connection, agent_ids: set[str]) -> dict[str, int]:
        """`heartbeat_count` of several agents in one query (the writer's group, at its start)."""
        ids = sorted(agent_ids)
        marks = ",".join("?" * len(ids))
        return {
            agent_id: int(n)
            for agent_id, n in conn.execute(
                f"SELECT agent_id, heartbeats FROM agents WHERE agent_id IN ({marks})", ids
            )
        }

    def load_agent(self, conn: sqlite3.Connection, agent_id: str) -> AgentView | None:
        """One agent's committed state, read inside the caller's write transaction.

        The writer starts from this rather than from memory, so several
        control-plane processes sharing one database (SO_REUSEPORT) never
        compute totals from a stale copy: BEGIN IMMEDIATE serialises them.
        """
        row = conn.execute(self._AGENT_COLUMNS + " WHERE agent_id = ?", (agent_id,)).fetchone()
        if row is None:
            return None
        series = store_series.load(conn, agent_id).get(agent_id, {})
        telemetry = store_insights.latest_telemetry(conn, agent_id).get(agent_id)
        image = image_report.load(conn, agent_id).get(agent_id)
        return self._view(row, series, telemetry, image)

    def count(self, table: str) -> int:
        """Row count of one of our tables (tests and /health)."""
        if table not in {"agents", "heartbeats", "events", "tokens", "interface_samples"}:
            raise ValueError(f"unknown table {table}")
        return int(self._conn().execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

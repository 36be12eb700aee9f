"""The single writer thread: group commit of heartbeats, then acknowledgement.

Every heartbeat must be durable before it is acknowledged, and an fsync per
heartbeat would cap throughput at the disk's fsync rate. Handlers therefore
queue validated heartbeats here and wait on a future; the writer drains
whatever has queued up (up to `max_batch`), writes it in one transaction,
commits (one fsync), publishes the new views to the fleet, and only then
resolves the futures. If the commit fails nothing is published and every
waiting heartbeat is answered UNAVAILABLE, so the agent retries and no
acknowledged data is ever missing. A failed batch is retried one heartbeat at
a time, so one bad heartbeat cannot sink its neighbours.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from sennet.common.log import event
from sennet.controlplane.fleet import AgentView, Fleet
from sennet.controlplane.refusals import Code, RequestError
from sennet.controlplane.store import Store
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

log = logging.getLogger("sennet.controlplane.writer")


@dataclass
class _Pending:
    req: pb.HeartbeatRequest
    received_at: float
    future: Future[pb.HeartbeatResponse]


class HeartbeatWriter:
    """Owns the write connection; `submit()` is safe from any thread."""

    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        *,
        retention_s: float,
        prune_every_s: float = 60.0,
        max_batch: int = 512,
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._retention_s = retention_s
        self._prune_every_s = prune_every_s
        self._max_batch = max_batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="sennet-writer", daemon=True)
        self.last_error: str | None = None
        self.commits = 0

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, req: pb.HeartbeatRequest) -> Future[pb.HeartbeatResponse]:
        """Queue a validated heartbeat; the future resolves after its commit."""
        fut: Future[pb.HeartbeatResponse] = Future()
        if not self._thread.is_alive():
            fut.set_exception(_unavailable("the store writer is not running"))
            return fut
        self._queue.put(_Pending(req, time.time(), fut))
        return fut

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        while True:  # anything that raced with stop is answered, never left hanging
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None and item.future.set_running_or_notify_cancel():
                item.future.set_exception(_unavailable("the control plane is shutting down"))

    def _run(self) -> None:
        conn = self._store.connect()
        next_prune = time.monotonic()
        try:
            while True:
                if time.monotonic() >= next_prune:
                    self._prune(conn)
                    next_prune = time.monotonic() + self._prune_every_s
                try:
                    first = self._queue.get(timeout=1.0)
                except queue.Empty:
                    continue
                if first is None:
                    return
                batch = [first]
                stopping = False
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                # A caller that gave up (client cancelled) is skipped; the rest can no
                # longer be cancelled, so resolving them below cannot fail.
                batch = [i for i in batch if i.future.set_running_or_notify_cancel()]
                try:
                    if batch and not self._commit(conn, batch) and len(batch) > 1:
                        for one in batch:
                            self._commit(conn, [one])
                except Exception as exc:  # a bug must not kill the only writer
                    event(log, "writer_error", logging.ERROR, error=repr(exc))
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(_unavailable(f"store: {exc!r}"))
                if stopping:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Pending]) -> bool:
        # Writers in other processes (SO_REUSEPORT) queue on a file lock, which wakes the
        # next one the moment it is released; SQLite's own busy handler polls with sleeps
        # of up to 100 ms, which showed up as the p99 when two processes shared a database.
        with self._store.writer_lock():
            return self._commit_locked(conn, batch)

    def _commit_locked(self, conn: sqlite3.Connection, batch: list[_Pending]) -> bool:
        overlay: dict[str, AgentView] = {}
        stored = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for item in batch:
                    aid = item.req.agent_id
                    view = overlay.get(aid) or self._current(conn, aid)
                    new_view, changed = view.apply(item.req, item.received_at)
                    stored.append(
                        self._store.insert_heartbeat(
                            conn, item.req, item.received_at, new_view, changed
                        )
                    )
                    overlay[aid] = new_view
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            event(log, "commit_failed", logging.ERROR, heartbeats=len(batch), error=self.last_error)
            if len(batch) == 1:
                batch[0].future.set_exception(_unavailable(f"store: {exc}"))
            return False
        self.last_error = None
        self.commits += 1
        self._fleet.publish(overlay)
        now_ns = time.time_ns()
        for item, n in zip(batch, stored, strict=True):
            item.future.set_result(
                pb.HeartbeatResponse(server_time_unix_ns=now_ns, events_stored=n)
            )
        return True

    def _current(self, conn: sqlite3.Connection, agent_id: str) -> AgentView:
        """The agent's committed state: memory if the database agrees, else the database.

        Another process sharing the database (SO_REUSEPORT) may have stored
        heartbeats since; `heartbeats` only grows, so equal counts mean equal state.
        """
        cached = self._fleet.get(agent_id)
        if cached is not None and self._store.heartbeat_count(conn, agent_id) == cached.heartbeats:
            return cached
        return self._store.load_agent(conn, agent_id) or AgentView(agent_id)

    def _prune(self, conn: sqlite3.Connection) -> None:
        try:
            deleted = self._store.prune(conn, time.time() - self._retention_s)
        except sqlite3.Error as exc:
            event(log, "retention_failed", logging.ERROR, error=str(exc))
            return
        if deleted:
            event(
                log, "retention_pruned", deleted_heartbeats=deleted, retention_s=self._retention_s
            )


def _unavailable(why: str) -> RequestError:
    return RequestError(Code.UNAVAILABLE, why, reason="store_unavailable")

"""The single writer thread: group commit of heartbeats, then acknowledgement.

Every heartbeat must be durable before it is acknowledged, and an fsync per
heartbeat would cap throughput at the disk's fsync rate. Handlers therefore
queue validated heartbeats here and wait on what the writer settles (a future,
or on the event loop a `wakeups.Reply`); the writer drains whatever has queued
up (up to `max_batch`), writes it in one transaction, commits (one fsync),
publishes the new views to the fleet, and only then settles them.

One bad client harms no other. Each heartbeat in a group is judged and written
on its own, inside a savepoint: one whose total would pass 2^63-1, that would
exceed the agent's series cap, or whose values SQLite cannot hold is refused
INVALID_ARGUMENT naming the field (its savepoint rolled back), and the rest of
the group commits and is acknowledged. Only a failure of the store itself (the
commit, the lock, the disk, or every heartbeat of a group failing in SQLite)
answers UNAVAILABLE, so the agents retry and no acknowledged data is missing;
such a failure sets `last_error`, which turns /health and gRPC health unhealthy.
While failing and idle the writer probes the store once a second with the same
kind of write a heartbeat makes (rolled back in effect, but committed to disk),
so health recovers when the fault clears even if no agent is sending. A commit
that neither succeeds nor fails (a sibling process on the same database hung
while holding the writers' file lock, which has no timeout) shows as
`stalled_for()`, which /health also reports.

The queue is bounded (`max_pending`): past it `submit` refuses at once with
RESOURCE_EXHAUSTED and a retry hint, instead of queueing more than the store
can write before the callers give up.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from sennet.common.log import event
from sennet.controlplane import old_path, validate
from sennet.controlplane.fleet import AgentView, Fleet, TooManySeries, TotalOverflow
from sennet.controlplane.refusals import Code, RequestError, overloaded
from sennet.controlplane.store import Store
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

log = logging.getLogger("sennet.controlplane.writer")
RETRY_AFTER_S = 1.0  # the hint sent with a full queue: about one group commit under load
# Longer than SQLite's 10 s busy timeout, so an ordinary lock wait ends in its own error first.
STALL_AFTER_S = 15.0


class Outcome(Protocol):
    """What the writer settles per heartbeat: a `concurrent.futures.Future`, or the lighter
    `wakeups.Reply` the event loop's handlers wait on."""

    def set_running_or_notify_cancel(self) -> bool: ...

    def set_result(self, result: pb.HeartbeatResponse) -> None: ...

    def set_exception(self, exception: BaseException | None) -> None: ...

    def done(self) -> bool: ...


class Writer(Protocol):
    """What the service and the application need of a heartbeat writer: this module's
    thread (`HeartbeatWriter`) or the child process (`writer_process.ProcessWriter`)."""

    last_error: str | None
    commits: int

    def start(self) -> None: ...

    def alive(self) -> bool: ...

    def stalled_for(self) -> float: ...

    def pending(self) -> int: ...

    def submit(self, req: pb.HeartbeatRequest) -> Future[pb.HeartbeatResponse]: ...

    def enqueue(
        self, req: pb.HeartbeatRequest, outcome: Outcome, received_at: float | None = None
    ) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...


@dataclass
class _Pending:
    req: pb.HeartbeatRequest
    received_at: float
    future: Outcome


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
        max_pending: int = 4096,
        max_series: int | None = None,
        probe_every_s: float = 1.0,
        group_wait_s: float = 0.0,
    ) -> None:
        self._store = store
        # after a group's first heartbeat, how long to let more arrive before writing it
        self._group_wait_s = group_wait_s
        self._fleet = fleet
        self._retention_s = retention_s
        self._prune_every_s = prune_every_s
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._max_series = max_series
        self._probe_every_s = probe_every_s
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="sennet-writer", daemon=True)
        self.last_error: str | None = None  # set while the store is failing; None once it commits
        self.commits = 0
        self._busy_since: float | None = None  # monotonic start of the commit or probe running
        # the stored heartbeat count of each agent in the group being written, read once
        self._group_counts = not old_path.selected()
        self._counts: dict[str, int] = {}

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stalled_for(self) -> float:
        """Seconds the running commit (or probe) has taken, if past `STALL_AFTER_S`; else 0."""
        since = self._busy_since
        if since is None:
            return 0.0
        took = time.monotonic() - since
        return took if took > STALL_AFTER_S else 0.0

    def pending(self) -> int:
        """Heartbeats queued and not yet taken by the writer."""
        return self._queue.qsize()

    def submit(self, req: pb.HeartbeatRequest) -> Future[pb.HeartbeatResponse]:
        """Queue a validated heartbeat; the future resolves after its commit.

        Raises `RequestError` (RESOURCE_EXHAUSTED, with a retry hint) when the
        queue is full.
        """
        fut: Future[pb.HeartbeatResponse] = Future()
        self.enqueue(req, fut)
        return fut

    def enqueue(
        self, req: pb.HeartbeatRequest, outcome: Outcome, received_at: float | None = None
    ) -> None:
        """Queue a validated heartbeat; `outcome` is settled after its commit.

        `received_at` (default: now) is when the control plane took the call; the
        writer process passes the parent's, so both sides fold the same view.
        Raises `RequestError` (RESOURCE_EXHAUSTED, with a retry hint) when the
        queue is full.
        """
        if not self._thread.is_alive():
            outcome.set_exception(_unavailable("the store writer is not running"))
            return
        try:
            at = time.time() if received_at is None else received_at
            self._queue.put_nowait(_Pending(req, at, outcome))
        except queue.Full:
            raise overloaded(
                "heartbeat queue",
                self._max_pending,
                "max_pending_heartbeats",
                "queue_full",
                RETRY_AFTER_S,
            ) from None

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(None)  # blocks while full; the running writer makes room
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
                    first = self._queue.get(timeout=self._probe_every_s)
                except queue.Empty:
                    if self.last_error is not None:
                        self._probe(conn)
                    continue
                if first is None:
                    return
                if self._group_wait_s:
                    time.sleep(self._group_wait_s)
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
                    if batch:
                        self._commit(conn, batch)
                except Exception as exc:  # a bug must not kill the only writer
                    log.exception("writer bug")
                    self._failed(exc, len(batch))
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(_unavailable(f"store: {exc!r}"))
                if stopping:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        # Writers in other processes (SO_REUSEPORT) queue on a file lock, which wakes the
        # next one the moment it is released; SQLite's own busy handler polls with sleeps
        # of up to 100 ms, which showed up as the p99 when two processes shared a database.
        self._busy_since = time.monotonic()
        try:
            with self._store.writer_lock():
                stored = self._commit_locked(conn, batch)
        finally:
            self._busy_since = None
        # Acknowledged only once the lock is released: a replica stopped (SIGSTOP, a hung
        # VM) right after its client saw the reply must not hold every other writer back.
        now_ns = time.time_ns()
        for item, n in stored:
            item.future.set_result(
                pb.HeartbeatResponse(server_time_unix_ns=now_ns, events_stored=n)
            )

    def _commit_locked(
        self, conn: sqlite3.Connection, batch: list[_Pending]
    ) -> list[tuple[_Pending, int]]:
        """Write and commit the group; returns the heartbeats to acknowledge (the committed)."""
        overlay: dict[str, AgentView] = {}
        stored: list[tuple[_Pending, int]] = []
        store_error: sqlite3.Error | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if self._group_counts:  # one query for the group, not one per heartbeat
                    self._counts = self._store.heartbeat_counts(
                        conn, {item.req.agent_id for item in batch}
                    )
                for item in batch:
                    try:
                        stored.append((item, self._stage(conn, item, overlay)))
                    except RequestError as err:  # this heartbeat only; the group goes on
                        item.future.set_exception(err)
                    except sqlite3.Error as exc:
                        if not conn.in_transaction:
                            raise  # SQLite rolled the whole transaction back (disk, I/O)
                        store_error = exc
                        item.future.set_exception(_unavailable(f"store: {exc}"))
                conn.execute("COMMIT" if stored else "ROLLBACK")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._failed(exc, len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(_unavailable(f"store: {exc}"))
            return []
        if not stored:
            if store_error is not None:  # every heartbeat failed in SQLite: the store is failing
                self._failed(store_error, len(batch))
            return []
        if self.last_error is not None:
            event(log, "writer_recovered", previous_error=self.last_error)
        self.last_error = None
        self.commits += 1
        self._fleet.publish(overlay)
        return stored

    def _stage(
        self, conn: sqlite3.Connection, item: _Pending, overlay: dict[str, AgentView]
    ) -> int:
        """Write one heartbeat inside a savepoint; raises `RequestError` for this one alone."""
        aid = item.req.agent_id
        view = overlay.get(aid) or self._current(conn, aid)
        try:
            new_view, changed = view.apply(item.req, item.received_at, self._max_series)
        except (TotalOverflow, TooManySeries) as exc:
            raise validate.stateful_refusal(item.req, exc) from None
        conn.execute("SAVEPOINT heartbeat")
        try:
            # the fold only appends keys: as many as the stored view means the same keys
            keys_stored = 0 < len(view.series) == len(new_view.series)
            n = self._store.insert_heartbeat(
                conn, item.req, item.received_at, new_view, changed, keys_stored
            )
        except sqlite3.Error:
            _undo(conn)
            raise
        except OverflowError as exc:  # a value past SQLite's integers that validation let by
            _undo(conn)
            raise RequestError(
                Code.INVALID_ARGUMENT, f"heartbeat: a value cannot be stored ({exc})", "unstorable"
            ) from None
        except Exception as exc:  # a bug met by this heartbeat must not fail its neighbours
            _undo(conn)
            log.exception("heartbeat not stored")
            raise RequestError(Code.INTERNAL, f"store: {exc!r}", "internal_error") from None
        conn.execute("RELEASE heartbeat")
        overlay[aid] = new_view
        return n

    def _failed(self, exc: BaseException, heartbeats: int) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        event(log, "commit_failed", logging.ERROR, heartbeats=heartbeats, error=self.last_error)

    def _probe(self, conn: sqlite3.Connection) -> None:
        """While failing and idle: one heartbeat-shaped write, so health can recover."""
        self._busy_since = time.monotonic()
        try:
            with self._store.writer_lock():
                self._store.probe_write(conn)
        except sqlite3.Error as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return
        finally:
            self._busy_since = None
        event(log, "writer_recovered", previous_error=self.last_error)
        self.last_error = None

    def _current(self, conn: sqlite3.Connection, agent_id: str) -> AgentView:
        """The agent's committed state: memory if the database agrees, else the database.

        Another process sharing the database (SO_REUSEPORT) may have stored
        heartbeats since; `heartbeats` only grows, so equal counts mean equal state.
        """
        cached = self._fleet.get(agent_id)
        if cached is not None:
            if self._group_counts:
                count = self._counts.get(agent_id)
            else:
                count = self._store.heartbeat_count(conn, agent_id)
            if count == cached.heartbeats:
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


def _undo(conn: sqlite3.Connection) -> None:
    """Roll one heartbeat's savepoint back (unless SQLite already ended the transaction)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK TO heartbeat")
        conn.execute("RELEASE heartbeat")


def _unavailable(why: str) -> RequestError:
    return RequestError(Code.UNAVAILABLE, why, reason="store_unavailable")

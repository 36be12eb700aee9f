"""The heartbeat writer in a child process: the parent's side (`writer_process` setting).

Measured in place over gRPC, the writer thread's Python (fold, SQL rows, group
COMMIT, /metrics preparation) cost several times what it costs in a loop of its
own, sharing the GIL and the caches with the event loop. `ProcessWriter` keeps
the writer's contract (`writer.Writer`) but runs `HeartbeatWriter` in
`writer_child.py`, a process of its own with its own connection. The parent
sends each validated heartbeat's protobuf bytes (batched by a sending thread,
so the event loop never blocks on the pipe) and settles each outcome from the
child's reports, which come only after the group's COMMIT: every acknowledged
heartbeat is durable, as with the thread.

/metrics reads this process's `Fleet`, so the parent folds each committed
heartbeat into its own copy of the agent's view, the same fold the child did
(`AgentView.apply` is deterministic given the view it starts from). The child
reports the agent's heartbeat count after each heartbeat; where the parent's
view is not the one before it (another process sharing the database wrote the
agent), the parent reads the committed view from the database instead.
Shipping the child's views back was measured as costlier: unpickling a plain
agent's view took 29 µs and one with flow, DNS and TCP parts 131 µs, more than
the fold (about 20 and 90 µs).

A caller that gave up is still written (the child cannot take back what it
queued) and its answer dropped; heartbeats carry cumulative counters, so that
loses nothing. If the child dies, every heartbeat it had not answered is
refused UNAVAILABLE and `alive()` turns false, which /health reports.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import queue
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection

from sennet.common.log import event
from sennet.controlplane.fleet import AgentView, Fleet
from sennet.controlplane.refusals import Code, RequestError, overloaded
from sennet.controlplane.store import Store
from sennet.controlplane.writer import RETRY_AFTER_S, STALL_AFTER_S, Outcome
from sennet.controlplane.writer_child import Report, pack
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

log = logging.getLogger("sennet.controlplane.writer")
_Frame = tuple[int, float, bytes]  # seq, received_at, the request's protobuf bytes
_STOP = b""  # the message that tells the child to finish and exit


@dataclass
class _Sent:
    req: pb.HeartbeatRequest
    received_at: float
    outcome: Outcome


class ProcessWriter:
    """`HeartbeatWriter`'s contract, with the writing done by a child process."""

    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        *,
        retention_s: float,
        max_pending: int = 4096,
        max_series: int | None = None,
        log_level: str = "info",
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._max_pending = max_pending
        self._argv = [
            sys.executable, "-m", "sennet.controlplane.writer_child",
            "--db", str(store.path),
            "--retention-s", repr(retention_s),
            "--max-pending", str(max_pending),
            "--log-level", log_level,
        ]  # fmt: skip
        if max_series is not None:
            self._argv += ["--max-series", str(max_series)]
        self._lock = threading.Lock()
        self._sent: dict[int, _Sent] = {}
        self._seq = itertools.count(1)
        self._outgoing: queue.SimpleQueue[list[_Frame] | None] = queue.SimpleQueue()
        # heartbeats the event loop queued in this iteration: one hand-off to the sender each
        self._batch: list[_Frame] = []
        self._batch_loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._reader = threading.Thread(target=self._read, name="sennet-writer-reader")
        self._sender = threading.Thread(target=self._send, name="sennet-writer-sender")
        self._last_report = time.monotonic()
        self._child_stalled = 0.0
        self._closed = False  # the child is gone: nothing more can be sent
        self.last_error: str | None = None
        self.commits = 0

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        argv = [*self._argv, "--fd", str(theirs.fileno())]
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        theirs.close()
        self._conn = Connection(ours.detach())
        self._last_report = time.monotonic()
        self._reader.start()
        self._sender.start()

    def alive(self) -> bool:
        return (
            self._proc is not None
            and self._proc.poll() is None
            and self._reader.is_alive()
            and self._sender.is_alive()
        )

    def stalled_for(self) -> float:
        """The child's own figure; or, with heartbeats waiting and no report for longer than
        `STALL_AFTER_S` (a stopped child), the time since its last report."""
        silent = time.monotonic() - self._last_report
        if self._sent and silent > STALL_AFTER_S:
            return silent
        return self._child_stalled

    def pending(self) -> int:
        """Heartbeats sent to the child and not yet answered."""
        return len(self._sent)

    def submit(self, req: pb.HeartbeatRequest) -> Future[pb.HeartbeatResponse]:
        fut: Future[pb.HeartbeatResponse] = Future()
        self.enqueue(req, fut)
        return fut

    def enqueue(
        self, req: pb.HeartbeatRequest, outcome: Outcome, received_at: float | None = None
    ) -> None:
        """Send a validated heartbeat to the child; `outcome` is settled after its COMMIT.

        Raises `RequestError` (RESOURCE_EXHAUSTED, with a retry hint) when
        `max_pending` heartbeats are already waiting for the child.
        """
        at = time.time() if received_at is None else received_at
        with self._lock:  # not `alive()`: a wait() syscall per heartbeat; the reader says it
            if self._closed or self._conn is None:
                outcome.set_exception(_unavailable("the store writer process is not running"))
                return
            if len(self._sent) >= self._max_pending:
                raise overloaded(
                    "heartbeat queue",
                    self._max_pending,
                    "max_pending_heartbeats",
                    "queue_full",
                    RETRY_AFTER_S,
                )
            seq = next(self._seq)
            self._sent[seq] = _Sent(req, at, outcome)
        frame = (seq, at, req.SerializeToString())
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a caller off the loop: hand it over alone
            self._outgoing.put([frame])
            return
        if self._batch_loop is None:
            self._batch_loop = loop
        if loop is not self._batch_loop:  # only one loop batches; any other hands over alone
            self._outgoing.put([frame])
            return
        self._batch.append(frame)
        if len(self._batch) == 1:  # the first since the last flush schedules it
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """On the loop, after the calls it was running: their heartbeats in one hand-off."""
        batch, self._batch = self._batch, []
        self._outgoing.put(batch)

    def stop(self, timeout: float = 10.0) -> None:
        """The child commits and answers what it has, then exits; anything left is refused."""
        if self._sender.is_alive():
            self._outgoing.put(None)
            self._sender.join(timeout)
        if self._reader.is_alive():
            self._reader.join(timeout)
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._conn is not None:
            self._conn.close()
        self._refuse_all("the control plane is shutting down")

    def _send(self) -> None:
        """Batch what the loop queued into one message per wake-up."""
        assert self._conn is not None
        while True:
            first = self._outgoing.get()
            batch, stopping = [], first is None
            if first is not None:
                batch += first
            while not stopping and len(batch) < 512:
                try:
                    more = self._outgoing.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                else:
                    batch += more
            try:
                if batch:
                    self._conn.send_bytes(pack(batch))
                if stopping:
                    self._conn.send_bytes(_STOP)
                    return
            except OSError:  # the child is gone; the reader refuses what it had
                return

    def _read(self) -> None:
        assert self._conn is not None
        db: sqlite3.Connection | None = None
        try:
            while True:
                try:
                    message = self._conn.recv_bytes()
                except (EOFError, OSError):
                    break
                report: Report = pickle.loads(message)
                if db is None and report.stored:
                    db = self._store.connect()
                self._apply(report, db)
        finally:
            if db is not None:
                db.close()
            code = self._proc.poll() if self._proc is not None else None
            if self._sent:
                event(log, "writer_process_gone", logging.ERROR, exit_code=code)
            self._refuse_all("the store writer process exited")

    def _apply(self, report: Report, db: sqlite3.Connection | None) -> None:
        """Install the committed views, then settle each outcome (never before)."""
        self._last_report = time.monotonic()
        self.last_error, self.commits = report.last_error, report.commits
        self._child_stalled = report.stalled_for
        with self._lock:  # a heartbeat already refused (stop() timed out) is not answered twice
            stored = [(s, sent) for s in report.stored if (sent := self._sent.pop(s.seq, None))]
            refused = [(r, sent) for r in report.refused if (sent := self._sent.pop(r.seq, None))]
        overlay: dict[str, AgentView] = {}
        for s, sent in stored:
            aid = sent.req.agent_id
            view = self._fold(overlay.get(aid) or self._fleet.get(aid), sent, s.heartbeats)
            if view is None and db is not None:
                view = _committed(self._store, db, aid)
            if view is not None:
                overlay[aid] = view
        if overlay:
            self._fleet.publish(overlay)
        for s, sent in stored:
            if sent.outcome.set_running_or_notify_cancel():
                sent.outcome.set_result(
                    pb.HeartbeatResponse(
                        server_time_unix_ns=s.server_time_unix_ns, events_stored=s.events_stored
                    )
                )
        for r, sent in refused:
            if sent.outcome.set_running_or_notify_cancel():
                err = RequestError(Code[r.code], r.message, r.reason, r.retry_after_s)
                sent.outcome.set_exception(err)

    @staticmethod
    def _fold(base: AgentView | None, sent: _Sent, heartbeats: int) -> AgentView | None:
        """The child's view, folded here; None when `base` is not the view it started from."""
        if base is None or base.heartbeats + 1 != heartbeats:
            return None
        try:
            return base.apply(sent.req, sent.received_at)[0]
        except ValueError:  # the child folded it, so the two views differ: read the database
            return None

    def _refuse_all(self, why: str) -> None:
        with self._lock:
            self._closed = True
            left = list(self._sent.values())
            self._sent.clear()
        for sent in left:
            if sent.outcome.set_running_or_notify_cancel():
                sent.outcome.set_exception(_unavailable(why))


def _committed(store: Store, db: sqlite3.Connection, agent_id: str) -> AgentView | None:
    """The agent's committed view, read in one transaction (one consistent snapshot)."""
    db.execute("BEGIN")
    try:
        return store.load_agent(db, agent_id)
    finally:
        db.execute("ROLLBACK")


def _unavailable(why: str) -> RequestError:
    return RequestError(Code.UNAVAILABLE, why, reason="store_unavailable")

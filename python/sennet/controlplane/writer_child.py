"""The heartbeat writer as a process of its own: the child side, and the wire both sides speak.

`writer_process.ProcessWriter` (the control plane's process) starts this module
as `python -m sennet.controlplane.writer_child` with one end of a socket pair.
Here the ordinary `HeartbeatWriter` runs unchanged (savepoints, group COMMIT,
synchronous=FULL, the writers' file lock, retention, probes while failing) on
its own connection, GIL and caches; the parent's event loop keeps only the
admission, the validation and the acknowledgement.

Wire (each message one `multiprocessing.connection` frame):
- parent -> child: a batch of heartbeats, each `seq, received_at, length` (`_FRAME`)
  and the request's protobuf bytes; an empty message means "finish what is
  queued, answer it, exit". End of file (the parent died) means the same.
- child -> parent: a pickled `Report` per batch of outcomes: the heartbeats
  committed (with the stored heartbeat count of the agent's view after each, so
  the parent can check it folds the same view), the ones refused (status,
  message, reason), and the writer's state for /health. A report goes out at
  least twice a second while idle, so a recovered or stalled store shows.

A heartbeat is reported as committed only from the writer's acknowledgement,
which follows its group's COMMIT; the parent acknowledges nothing else.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import signal
import sqlite3
import struct
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import NamedTuple

from sennet.common import log as slog
from sennet.controlplane.fleet import AgentView, Fleet
from sennet.controlplane.refusals import Code, RequestError
from sennet.controlplane.store import Store
from sennet.controlplane.writer import HeartbeatWriter, _Pending
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

_FRAME = struct.Struct("<QdI")  # seq, received_at, length of the protobuf bytes that follow
REPORT_EVERY_S = 0.5
# A writer of its own commits as soon as a heartbeat arrives, in groups of 3 at the bench's
# load against 8-15 for the thread (slowed by the event loop's GIL), and pays BEGIN, the
# writers' lock, COMMIT and a report per group: waiting this long for more first
# (the acknowledgement's latency grows by as much) keeps groups large.
GROUP_WAIT_S = 0.002


class Stored(NamedTuple):
    seq: int
    heartbeats: int  # the agent's stored heartbeat count with this one
    events_stored: int
    server_time_unix_ns: int


class Refused(NamedTuple):
    seq: int
    code: str  # a `refusals.Code` member's name
    message: str
    reason: str
    retry_after_s: float | None


class Report(NamedTuple):
    stored: list[Stored]
    refused: list[Refused]
    last_error: str | None
    commits: int
    stalled_for: float


def pack(items: list[tuple[int, float, bytes]]) -> bytes:
    """One parent -> child message: (seq, received_at, protobuf bytes) per heartbeat."""
    return b"".join(_FRAME.pack(seq, at, len(body)) + body for seq, at, body in items)


def unpack(message: bytes) -> list[tuple[int, float, bytes]]:
    """Inverse of `pack`; raises ValueError naming the offset of a truncated frame."""
    out, offset = [], 0
    while offset < len(message):
        if offset + _FRAME.size > len(message):
            raise ValueError(f"writer wire: truncated frame header at byte {offset}")
        seq, at, length = _FRAME.unpack_from(message, offset)
        offset += _FRAME.size
        if offset + length > len(message):
            raise ValueError(f"writer wire: frame {seq} runs past the message at byte {offset}")
        out.append((seq, at, message[offset : offset + length]))
        offset += length
    return out


class _Outbox:
    """Outcomes settled by the writer thread, sent to the parent in batches by one thread."""

    def __init__(self, conn: Connection, writer: HeartbeatWriter) -> None:
        self._conn = conn
        self._writer = writer
        self._cond = threading.Condition()
        self._stored: list[Stored] = []
        self._refused: list[Refused] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="sennet-writer-outbox")

    def start(self) -> None:
        self._thread.start()

    def stored(self, item: Stored) -> None:
        with self._cond:
            self._stored.append(item)
            self._cond.notify()

    def refused(self, seq: int, err: RequestError) -> None:
        with self._cond:
            self._refused.append(
                Refused(seq, err.code.name, err.message, err.reason, err.retry_after_s)
            )
            self._cond.notify()

    def close(self) -> None:
        """Send what is left, then stop the sending thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not (self._stored or self._refused or self._closing):
                    self._cond.wait(REPORT_EVERY_S)
                stored, self._stored = self._stored, []
                refused, self._refused = self._refused, []
                closing = self._closing
            w = self._writer
            report = Report(stored, refused, w.last_error, w.commits, w.stalled_for())
            try:
                self._conn.send_bytes(pickle.dumps(report, pickle.HIGHEST_PROTOCOL))
            except OSError:  # the parent is gone: nobody is waiting for an answer
                return
            if closing:
                return


class _Remote:
    """One heartbeat's outcome, as the writer thread settles it (the `Outcome` protocol)."""

    __slots__ = ("_outbox", "_settled", "heartbeats", "seq")

    def __init__(self, outbox: _Outbox, seq: int) -> None:
        self._outbox = outbox
        self.seq = seq
        self.heartbeats = 0  # set when the writer stages it (`_ChildWriter._stage`)
        self._settled = False

    def set_running_or_notify_cancel(self) -> bool:
        return True  # a caller that gave up is the parent's to skip

    def done(self) -> bool:
        return self._settled

    def set_result(self, result: pb.HeartbeatResponse) -> None:
        self._settled = True
        self._outbox.stored(
            Stored(self.seq, self.heartbeats, result.events_stored, result.server_time_unix_ns)
        )

    def set_exception(self, exception: BaseException | None) -> None:
        self._settled = True
        if not isinstance(exception, RequestError):  # the writer only refuses with these
            exception = RequestError(Code.INTERNAL, f"store: {exception!r}", "internal_error")
        self._outbox.refused(self.seq, exception)


class _ChildWriter(HeartbeatWriter):
    """The writer, noting each staged heartbeat's view count for the parent's check."""

    def _stage(
        self, conn: sqlite3.Connection, item: _Pending, overlay: dict[str, AgentView]
    ) -> int:
        n = super()._stage(conn, item, overlay)
        if isinstance(item.future, _Remote):
            item.future.heartbeats = overlay[item.req.agent_id].heartbeats
        return n


def serve(conn: Connection, store: Store, writer: HeartbeatWriter, outbox: _Outbox) -> None:
    """Feed the parent's heartbeats to the writer until told to stop or the parent is gone."""
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not message:
            return
        for seq, at, body in unpack(message):
            remote = _Remote(outbox, seq)
            try:
                writer.enqueue(pb.HeartbeatRequest.FromString(body), remote, at)
            except RequestError as err:  # a full queue: the parent answers it with the hint
                outbox.refused(seq, err)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the control plane's heartbeat writer process")
    parser.add_argument("--fd", type=int, required=True, help="this end of the parent's pipe")
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--retention-s", type=float, required=True)
    parser.add_argument("--max-pending", type=int, required=True)
    parser.add_argument("--max-series", type=int, default=None)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    slog.setup(args.log_level)
    # the parent decides when this ends (an empty message, or its end of the pipe closing),
    # so a signal meant for it (Ctrl-C in a terminal reaches the whole group) is left to it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(args.fd)
    store = Store(args.db)
    writer = _ChildWriter(
        store,
        Fleet(store.load_fleet()),
        retention_s=args.retention_s,
        max_pending=args.max_pending,
        max_series=args.max_series,
        group_wait_s=GROUP_WAIT_S,
    )
    outbox = _Outbox(conn, writer)
    writer.start()
    outbox.start()
    try:
        serve(conn, store, writer, outbox)
    finally:
        writer.stop()  # what is queued is committed and answered first
        outbox.close()
        conn.close()
        store.close()
    logging.getLogger("sennet.controlplane.writer").debug("writer process done")
    return 0


if __name__ == "__main__":
    # run as `-m`, this file is `__main__`; the reports must pickle under the module's own
    # name, which the parent unpickles, so the work runs from the module imported by name
    from sennet.controlplane import writer_child

    sys.exit(writer_child.main())

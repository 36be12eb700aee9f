"""Heartbeat acknowledgements back onto the event loop, one wake-up for a whole group.

The writer thread settles what a handler waits on after the group commit.
Through a `concurrent.futures.Future` that costs, per heartbeat, a future
with its own condition and lock, two done-callbacks with their closures, and
on the loop `asyncio.wrap_future`'s wake-up (a self-pipe write) or a second
settling step. A `Reply` is what the writer settles instead: it stands for an
asyncio future on the handler's loop, and settling it only joins a list;
the first reply settled since the loop last drained that list schedules the
drain, so a group of 30 costs one wake-up and no per-heartbeat lock but the
list's. A call cancelled on the loop (the client went away) is skipped by
the writer if it has not taken it yet (`set_running_or_notify_cancel`), as a
cancelled future was; one taken already is written and its answer dropped.
"""

from __future__ import annotations

import asyncio
import threading

from sennet.proto.sentinel.v1 import sentinel_pb2 as pb


class Reply:
    """One heartbeat's answer as the writer sees it (the `Outcome` protocol in writer.py)."""

    __slots__ = ("_loop", "_settled", "_wakeups", "offer", "waiter")

    def __init__(self, wakeups: Wakeups, loop: asyncio.AbstractEventLoop) -> None:
        self._wakeups = wakeups
        self._loop = loop
        self.waiter: asyncio.Future[pb.HeartbeatResponse] = loop.create_future()
        self.offer: pb.UpdateOffer | None = None  # added to the answer on the loop
        self._settled = False

    def set_running_or_notify_cancel(self) -> bool:
        """False when the caller gave up before the writer took the heartbeat."""
        return not self.waiter.cancelled()

    def done(self) -> bool:
        return self._settled

    def set_result(self, result: pb.HeartbeatResponse) -> None:
        self._settled = True
        self._wakeups.settle(self._loop, (self, result, None))

    def set_exception(self, exception: BaseException | None) -> None:
        self._settled = True
        self._wakeups.settle(self._loop, (self, None, exception))


_Settled = tuple[Reply, pb.HeartbeatResponse | None, BaseException | None]


class Wakeups:
    """Replies settled by the writer, handed to their loop in one callback per drain."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # per loop: one control plane has one, but nothing here needs to assume it
        self._done: dict[asyncio.AbstractEventLoop, list[_Settled]] = {}

    def reply(self) -> Reply:
        """A reply whose `waiter` settles on the running loop."""
        return Reply(self, asyncio.get_running_loop())

    def settle(self, loop: asyncio.AbstractEventLoop, settled: _Settled) -> None:
        """Any thread: queue one answer; only the first since the last drain wakes the loop."""
        with self._lock:
            pending = self._done.get(loop)
            if pending is not None:
                pending.append(settled)
                return
            self._done[loop] = [settled]
        loop.call_soon_threadsafe(self._drain, loop)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            done = self._done.pop(loop, [])
        for reply, result, exc in done:
            waiter = reply.waiter
            if waiter.done():  # cancelled meanwhile
                continue
            if exc is not None:
                waiter.set_exception(exc)
                continue
            assert result is not None  # set_result's
            if reply.offer is not None:
                result.update_offer.CopyFrom(reply.offer)
            waiter.set_result(result)

"""Heartbeat acknowledgements back onto the event loop, one wake-up for a whole group.

The writer thread resolves one `concurrent.futures.Future` per heartbeat.
`asyncio.wrap_future` would schedule one callback per future onto the loop,
each a write to the loop's self-pipe and a wake-up; a group commit of 30
heartbeats cost 30 of them. Here a finished future only joins a list, and
only the first one since the loop last drained it schedules the drain, so a
group costs one. Cancellation still flows both ways: a call cancelled on the
loop (the client went away) cancels its writer future, which the writer then
skips if it has not taken it yet.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class Wakeups:
    """Awaitable views of writer futures for the loop that creates them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: list[tuple[Future[object], asyncio.Future[object]]] = []
        self._scheduled = False

    def wait(self, fut: Future[T]) -> asyncio.Future[T]:
        """An asyncio future on the running loop that settles like `fut`."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()

        def finished(f: Future[T]) -> None:  # the writer thread (or here, if already done)
            with self._lock:
                self._done.append((f, waiter))  # type: ignore[arg-type]
                if self._scheduled:
                    return
                self._scheduled = True
            loop.call_soon_threadsafe(self._drain)

        def cancelled(w: asyncio.Future[T]) -> None:
            if w.cancelled():
                fut.cancel()

        waiter.add_done_callback(cancelled)
        fut.add_done_callback(finished)
        return waiter

    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._scheduled = False
        for fut, waiter in done:
            if waiter.done():  # cancelled meanwhile
                continue
            if fut.cancelled():
                waiter.cancel()
                continue
            exc = fut.exception()
            if exc is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(fut.result())

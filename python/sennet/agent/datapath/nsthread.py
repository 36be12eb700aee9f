"""Run calls inside one network namespace, also after the agent gave root up.

libbpf opens its rtnetlink socket in the calling thread's namespace at every
call, and entering a namespace needs CAP_SYS_ADMIN, which the agent drops after
attaching (`run_as`). So when the monitored interfaces live in another namespace
(`netns`), one thread enters it while the agent is still root and stays there for
the agent's life, and every TC/XDP call runs on that thread. Without `netns`
calls run on the caller's thread: no thread, no hand-over.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from sennet.common.netns import enter_for_good

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class _Call:
    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class NetnsRunner:
    """Calls `run(fn, ...)` in network namespace `netns` ("" = the caller's own)."""

    def __init__(self, netns: str = "") -> None:
        self.netns = netns
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if netns:
            entering = _Call(lambda: None)
            self._thread = threading.Thread(
                target=self._serve, args=(entering,), name=f"netns-{netns}", daemon=True
            )
            self._thread.start()
            entering.done.wait()
            if entering.error is not None:
                self._thread.join()
                self._thread = None
                raise entering.error

    @property
    def on_own_thread(self) -> bool:
        """True when calls run on a thread of their own (one that `run_as` must reduce too)."""
        return self._thread is not None

    def _serve(self, entering: _Call) -> None:
        try:
            enter_for_good(self.netns)  # no way back once root is given up; none needed
        except BaseException as exc:  # reported to the constructor, which raises it
            entering.error = exc
            entering.done.set()
            return
        entering.done.set()
        while (call := self._calls.get()) is not None:
            try:
                call.result = call.fn()
            except BaseException as exc:  # handed to the caller, raised there
                call.error = exc
            call.done.set()

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """fn(*args, **kwargs) in the namespace; its exception is raised here."""
        if self._thread is None:
            return fn(*args, **kwargs)
        call = _Call(lambda: fn(*args, **kwargs))
        self._calls.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        result: T = call.result
        return result

    def close(self) -> None:
        if self._thread is not None:
            self._calls.put(None)
            self._thread.join()
            self._thread = None

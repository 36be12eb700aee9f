"""The one retry primitive: a predicate polled on the monotonic clock until it holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class RetryTimeout(TimeoutError):
    """The condition did not hold in time; the message carries the last attempt's reason."""


def retry(
    attempt: Callable[[bool], T | None],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call `attempt(last)` until it returns something other than None.

    `last` is True on the final attempt, so the caller can log diagnostics
    exactly once. An exception from the final attempt propagates.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = time.monotonic() + interval >= deadline
        value = attempt(last)
        if value is not None:
            return value
        if last:
            raise RetryTimeout(f"{what} did not hold within {timeout:.1f} s")
        time.sleep(interval)

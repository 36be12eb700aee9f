"""Enter a named network namespace for one thread, briefly.

The agent stays in the host's mount namespace (so its pinned maps live in the
real /sys/fs/bpf and survive restarts) and opens only its netlink socket inside
the namespace that holds the monitored interfaces. Running the whole agent under
`ip netns exec` instead would give it a private /sys, and pins made there vanish
with the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

from sennet.common.errors import UserError

CLONE_NEWNET = 0x40000000


def enter_for_good(name: str) -> None:
    """Switch the calling thread into /run/netns/NAME for the rest of its life: for a
    thread that stays there after the agent gave up the right to switch back."""
    with entered(name, back=False):
        pass


@contextlib.contextmanager
def entered(name: str | None, back: bool = True) -> Iterator[None]:
    """Switch the calling thread into /run/netns/NAME (no-op for None or ""); switch back
    at the end unless `back` is False."""
    if not name:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    except FileNotFoundError:
        os.close(home)
        raise UserError(
            f"network namespace {name!r} does not exist", hint="see `ip netns list`"
        ) from None
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise UserError(f"cannot enter network namespace {name!r}: {os.strerror(err)}")
        try:
            yield
        finally:
            if back and libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "cannot return to the original network namespace")
    finally:
        os.close(target)
        os.close(home)

"""Real TCP between test namespaces, and the kernel's own account of it.

The TCP health figures are checked against what the kernel and real sockets
report, never against our own code: `nstat` inside a namespace (the SNMP
counters of that namespace's TCP stack), the outcome of each connect() a
real socket made, and a packet capture on the far end of the link.
"""

from __future__ import annotations

import contextlib
import errno
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from sennet.common.netns import entered
from sennet.testing.errors import HarnessError
from sennet.testing.netlab import ETH_P_ALL, sh


def nstat(netns: str, *names: str) -> dict[str, int]:
    """Absolute SNMP counters of `netns` (`nstat -asz`: no history file read or written)."""
    out = sh("ip", "netns", "exec", netns, "nstat", "-asz", "--json", *names)
    kernel = json.loads(out)["kernel"]
    missing = set(names) - set(kernel)
    if missing:
        raise HarnessError(f"harness: nstat in {netns} lacks {sorted(missing)}")
    return {k: int(v) for k, v in kernel.items()}


@contextlib.contextmanager
def listener(
    netns: str, addr: str, port: int, rcvbuf: int | None = None
) -> Iterator[list[socket.socket]]:
    """A listening socket in `netns` accepting in the background; yields the accepted sockets
    (left unread, so a test decides what the receiver does). `rcvbuf` (SO_RCVBUF) is
    inherited by every accepted socket."""
    with entered(netns):
        srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf is not None:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    srv.bind((addr, port))
    srv.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([srv], [], [], 0.05)
            if ready:
                conn, _ = srv.accept()
                accepted.append(conn)

    worker = threading.Thread(target=accept, daemon=True)
    worker.start()
    try:
        yield accepted
    finally:
        stop.set()
        worker.join(timeout=5)
        for conn in accepted:
            conn.close()
        srv.close()


def connect(netns: str, addr: str, port: int, timeout: float) -> int:
    """One connect() from `netns`: 0 when it completed, else its errno (ETIMEDOUT for no answer
    within `timeout`). The socket is closed either way."""
    with entered(netns):
        s = socket.socket()
    with contextlib.closing(s):
        s.setblocking(False)
        rc = s.connect_ex((addr, port))
        if rc not in (0, errno.EINPROGRESS):
            return rc
        _, writable, _ = select.select([], [s], [], timeout)
        if not writable:
            return errno.ETIMEDOUT
        return int(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))


def connect_all(netns: str, addr: str, port: int, count: int, timeout: float) -> list[int]:
    """`count` concurrent connect() calls (see `connect`), one thread each; their outcomes."""
    results = [-1] * count

    def one(i: int) -> None:
        results[i] = connect(netns, addr, port, timeout)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout + 10)
    return results


@dataclass
class Capture:
    """Every frame crossing one interface, both directions, as an AF_PACKET socket saw it."""

    frames: list[bytes] = field(default_factory=list)


@contextlib.contextmanager
def capture(netns: str, ifname: str) -> Iterator[Capture]:
    """Record frames on `ifname` until the block ends (then drain what is queued).

    A packet socket sees each frame once, outgoing or incoming; on the sending
    side it sees GSO aggregates before segmentation."""
    with entered(netns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((ifname, 0))
    got = Capture()
    stop = threading.Event()

    def read() -> None:
        while True:
            ready, _, _ = select.select([s], [], [], 0.05)
            if ready:
                got.frames.append(s.recv(65535))
            elif stop.is_set():
                return

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    try:
        yield got
    finally:
        time.sleep(0.2)  # frames still in flight on the link
        stop.set()
        worker.join(timeout=10)
        s.close()
    if worker.is_alive():
        raise HarnessError(f"harness: capture on {ifname} did not stop")

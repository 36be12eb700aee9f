"""A delaying, lossy link between a test pair's far side and a third namespace.

This kernel has no netem (CONFIG_NET_SCH_NETEM is off), so the path's delay
and loss are made in user space: the pair's far namespace becomes a bridge
between its veth end (`peer0`) and a new veth pair to a host namespace
(`srv0`), and two threads copy Ethernet frames between the two packet sockets.
Frames towards the monitored side wait `delay_s`; frames from it are dropped
with probability `loss` (a seeded generator, so a run is repeatable). The
monitored interface sees every frame its stack sends before the line drops or
delays it, exactly as with netem on the path.

The line copies bytes, so the checksums in them must be complete: transmit
checksum offload is turned off on both ends (`mon0`, `srv0`); with it on, veth
hands over frames whose TCP checksum is only the pseudo-header's and the far
stack drops them. (That also turns TSO off, which needs checksum offload: the
stack still builds GSO aggregates, and segments them after TC egress.) A frame
larger than the link's MTU cannot be sent on and is counted in `oversize`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from sennet.common.netns import entered
from sennet.testing.errors import HarnessError
from sennet.testing.linkstats import set_features
from sennet.testing.netlab import ETH_P_ALL, VethPair, namespace, sh

TX_CSUM = "tx-checksum-ip-generic"
LINE_NICE = -10  # the line's threads: ahead of the tests' own work and of a loaded machine's


@dataclass
class Line:
    far_ns: str  # the namespace behind the line
    far_if: str
    forwarded: int = 0
    dropped: int = 0
    oversize: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)


def _socket(netns: str, ifname: str) -> socket.socket:
    with entered(netns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((ifname, 0))
    return s


def _frames(s: socket.socket, stop: threading.Event) -> Iterator[bytes]:
    """Frames arriving on the socket's interface (our own sends on it are skipped)."""
    while not stop.is_set():
        ready, _, _ = select.select([s], [], [], 0.02)
        if not ready:
            continue
        data, addr = s.recvfrom(65535)
        if addr[2] != socket.PACKET_OUTGOING:
            yield data


def _send(line: Line, s: socket.socket, frame: bytes) -> None:
    try:
        s.send(frame)
        line.forwarded += 1
    except OSError:
        line.oversize += 1


@contextlib.contextmanager
def delay_line(
    net: VethPair, delay_s: float = 0.0, loss: float = 0.0, seed: int = 12
) -> Iterator[Line]:
    """Turn `net`'s far side into a line to a new namespace (interface `srv0`, up, no address)."""
    with namespace("snfar") as far:
        tag = uuid.uuid4().hex[:8]
        sh("ip", "link", "add", f"la{tag}", "mtu", "9000", "netns", net.ns_b, "type", "veth",
           "peer", "name", f"lb{tag}", "mtu", "9000", "netns", far)  # fmt: skip
        sh("ip", "-n", net.ns_b, "link", "set", f"la{tag}", "up")
        sh("ip", "-n", far, "link", "set", f"lb{tag}", "name", "srv0", "up")
        set_features(net.ns_a, net.if_a, {TX_CSUM: False})
        set_features(far, "srv0", {TX_CSUM: False})
        line = Line(far, "srv0")
        near = _socket(net.ns_b, net.if_b)
        beyond = _socket(net.ns_b, f"la{tag}")
        rng = random.Random(seed)
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        ready = threading.Condition()

        def outward() -> None:  # from the monitored side: maybe lost
            for frame in _frames(near, line._stop):
                if loss and rng.random() < loss:
                    line.dropped += 1
                    continue
                _send(line, beyond, frame)

        def inward() -> None:  # towards the monitored side: delayed
            for frame in _frames(beyond, line._stop):
                if not delay_s:
                    _send(line, near, frame)
                    continue
                with ready:
                    queue.append((time.monotonic() + delay_s, frame))
                    ready.notify()

        def release() -> None:
            while not line._stop.is_set():
                with ready:
                    if not queue:
                        ready.wait(0.02)
                        continue
                    due, frame = queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                with ready:
                    queue.popleft()
                _send(line, near, frame)

        workers = [threading.Thread(target=f, daemon=True) for f in (outward, inward, release)]
        for w in workers:
            w.start()
            # A wire's delay does not grow with the machine's load; these threads stand in
            # for one, so they run ahead of ordinary work (nice -10; Linux's nice is per
            # thread). Else a busy machine keeps a frame waiting past its delay's histogram
            # bucket (40 ms imposed, the bucket ends at 65.5 ms).
            if w.native_id is None:
                raise HarnessError("harness: a delay-line thread has no native id after start")
            os.setpriority(os.PRIO_PROCESS, w.native_id, LINE_NICE)
        try:
            yield line
        finally:
            line._stop.set()
            for w in workers:
                w.join(timeout=5)
            near.close()
            beyond.close()
        if any(w.is_alive() for w in workers):
            raise HarnessError("harness: the delay line did not stop")


def address(net: VethPair, line: Line, a: str = "10.9.0.1", far: str = "10.9.0.2") -> None:
    """IPv4 addresses on the monitored interface and beyond the line, with permanent
    neighbour entries both ways (no ARP crosses: the line carries only the test's traffic)."""
    sh("ip", "-n", net.ns_a, "addr", "add", f"{a}/24", "dev", net.if_a)
    sh("ip", "-n", line.far_ns, "addr", "add", f"{far}/24", "dev", line.far_if)
    sh("ip", "-n", net.ns_a, "neigh", "add", far, "lladdr", mac(line.far_ns, line.far_if),
       "dev", net.if_a, "nud", "permanent")  # fmt: skip
    sh("ip", "-n", line.far_ns, "neigh", "add", a, "lladdr", mac(net.ns_a, net.if_a),
       "dev", line.far_if, "nud", "permanent")  # fmt: skip


def mac(netns: str, ifname: str) -> str:
    """The interface's hardware address."""
    (link,) = json.loads(sh("ip", "-n", netns, "-j", "link", "show", "dev", ifname))
    return str(link["address"])

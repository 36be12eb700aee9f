"""Real DNS for tests: dnsmasq in a test namespace, a purpose-built upstream, a delaying
relay, a resolver client.

dnsmasq (Debian's) answers the records a test configures, NXDOMAIN for names
under a zone it is local for, and REFUSED for names it has no server for. It
cannot make up a SERVFAIL, so a small upstream built on dnspython answers every
question with the one RCODE it is told, and dnsmasq forwards a zone to it: the
SERVFAIL the client sees is relayed by the real server. The client is
dnspython's own resolver code: what it sent and what it got back is the oracle
the data plane's counts are compared with.

The delay on the path comes from a relay in front of dnsmasq that holds each
answer for a fixed time before sending it on, byte for byte: this kernel has no
netem (CONFIG_NET_SCH_NETEM is not set), and a relay imposes the same delay.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from sennet.common.netns import entered
from sennet.testing.netlab import sh
from sennet.testing.process import LoggedProcess, owned

REALTIME_PRIORITY = 10


def realtime() -> None:
    """Run the calling thread under SCHED_FIFO: on a busy test machine a server thread woken by
    a packet would otherwise wait for a CPU for milliseconds, and the imposed delay would not be
    the delay on the path."""
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))


@contextlib.contextmanager
def upstream(netns: str, port: int, rcode: dns.rcode.Rcode) -> Iterator[None]:
    """A UDP responder on 127.0.0.1:`port` inside `netns` answering every query with `rcode`."""
    with entered(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        realtime()
        while not stop.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            reply = dns.message.make_response(query)
            reply.set_rcode(rcode)
            sock.sendto(reply.to_wire(), peer)

    thread = threading.Thread(target=serve, name=f"dns-upstream-{port}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sock.close()


@contextlib.contextmanager
def delaying_relay(
    netns: str, listen: tuple[str, int], server: tuple[str, int], delay_s: float
) -> Iterator[list[float]]:
    """UDP on `listen` forwarded to `server`; each answer is sent on `delay_s` after it came.

    Yields the list of holds it applied (seconds, its own clock), one per answer.
    """
    with entered(netns):
        front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind(listen)
    back.bind(("127.0.0.1", 0))
    stop = threading.Event()
    holds: list[float] = []
    clients: dict[bytes, tuple[str, int]] = {}  # transaction id -> who asked

    def serve() -> None:
        realtime()
        while not stop.is_set():
            ready, _, _ = select.select([front, back], [], [], 0.1)
            if front in ready:
                wire, peer = front.recvfrom(4096)
                clients[wire[:2]] = peer
                back.sendto(wire, server)
            if back in ready:
                wire, _ = back.recvfrom(4096)
                came = time.monotonic()
                time.sleep(max(0.0, came + delay_s - time.monotonic()))
                peer = clients.pop(wire[:2], None)
                if peer is not None:
                    holds.append(time.monotonic() - came)
                    front.sendto(wire, peer)

    thread = threading.Thread(target=serve, name="dns-relay", daemon=True)
    thread.start()
    try:
        yield holds
    finally:
        stop.set()
        thread.join()
        front.close()
        back.close()


@contextlib.contextmanager
def dnsmasq(
    netns: str, listen: str, port: int, workdir: Path, options: Sequence[str]
) -> Iterator[None]:
    """dnsmasq on `listen`:`port` in `netns` (upstreams as `options` say); killed at exit."""
    argv = [
        "ip", "netns", "exec", netns, "chrt", "-f", str(REALTIME_PRIORITY),
        "dnsmasq", "--keep-in-foreground", "--log-facility=-",
        "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces", "--pid-file=",
        f"--listen-address={listen}", f"--port={port}", "--user=root", "--cache-size=0",
        *options,
    ]  # fmt: skip
    proc = LoggedProcess("dnsmasq", argv, workdir / "dnsmasq.log")
    with owned(proc.start()):
        proc.wait_for_log("started, version", timeout=10)
        yield


@dataclass(frozen=True)
class Asked:
    """One question and what the client saw: the RCODE's name, or None when nothing came back."""

    name: str
    rdtype: str
    rcode: str | None
    rtt_s: float


def ask(netns: str, server: str, name: str, rdtype: str, timeout: float = 2.0) -> Asked:
    """One query over UDP from inside `netns`, as a stub resolver sends it."""
    query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
    start = time.monotonic()
    with entered(netns):
        try:
            reply = dns.query.udp(query, server, timeout=timeout)
        except dns.exception.Timeout:
            return Asked(name, rdtype, None, time.monotonic() - start)
    return Asked(name, rdtype, dns.rcode.to_text(reply.rcode()), time.monotonic() - start)


def address(netns: str, ifname: str, cidr: str) -> None:
    """Give an interface of a test namespace an IPv4 address (the link is already up)."""
    sh("ip", "-n", netns, "addr", "add", cidr, "dev", ifname)

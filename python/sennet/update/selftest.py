"""The local traffic self-test: frames out of each monitored NIC, counted by the data plane.

Where no control plane acknowledges a heartbeat, "the agent works" is shown on
the wire: a few broadcast frames of the IEEE local-experimental EtherType
0x88B5 are sent out of each monitored NIC with a raw packet socket, which
passes the TC egress hook like any transmitted frame; the agent's counters in
the pinned maps (read as `sennet-agent status` does) must rise by at least that
many transmitted packets on that NIC. A data plane that is not attached, or
counts nothing, fails.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from sennet.common.netns import entered

ETHERTYPE = 0x88B5
FRAMES = 5
PAYLOAD = b"sennet-update-selftest"


def tx_packets(pin_dir: Path, netns: str) -> dict[str, int]:
    """Transmitted packets per interface, from the agent's pinned maps."""
    from sennet.agent.pinned_status import read_status

    status = read_status(pin_dir, netns)
    return {i["ifname"]: int(i["tx_packets"]) for i in status["interfaces"]}


def frame(src_mac: bytes) -> bytes:
    body = PAYLOAD.ljust(46, b"\0")
    return b"\xff" * 6 + src_mac + ETHERTYPE.to_bytes(2, "big") + body


def send_frames(ifname: str, netns: str, count: int = FRAMES) -> None:
    with entered(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
    with sock:
        sock.bind((ifname, 0))
        mac = sock.getsockname()[4]
        for _ in range(count):
            sock.send(frame(mac))


def run(
    nics: list[str],
    counts: Callable[[], dict[str, int]],
    send: Callable[[str], None],
    wait_s: float = 3.0,
) -> str | None:
    """None when every NIC's transmit count rose by FRAMES; else `self_test_failed: NICS`."""
    if not nics:
        return "self_test_failed: no monitored NIC"
    try:
        before = counts()
    except Exception as exc:  # no pins: the agent never loaded
        return f"self_test_failed: no counters ({type(exc).__name__})"
    failed = [n for n in nics if n not in before]
    for nic in nics:
        if nic in before:
            try:
                send(nic)
            except OSError:
                failed.append(nic)
    pending = [n for n in nics if n not in failed]
    deadline = time.monotonic() + wait_s
    while pending:
        now = counts()
        pending = [n for n in pending if now.get(n, 0) - before[n] < FRAMES]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    failed += pending
    return None if not failed else "self_test_failed: " + ",".join(sorted(set(failed)))


def for_device(pin_dir: Path, netns: str) -> Callable[[list[str]], str | None]:
    """The self-test bound to the real pinned maps and raw sockets."""
    return lambda nics: run(
        nics, lambda: tx_packets(pin_dir, netns), lambda nic: send_frames(nic, netns)
    )

"""Test-owned network namespaces and veth pairs, and raw frame I/O inside them.

Everything here is created by the test that uses it and removed afterwards,
also on failure: nothing else on the host is touched. IPv6 is disabled in each
namespace before its devices exist, so no router solicitation or DAD packet
spoils an exact count; no addresses are configured, so no ARP either.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from sennet.common.netns import entered

ETH_P_ALL = 0x0003


def sh(*argv: str) -> str:
    """Run a setup command; raise with its stderr if it fails (the harness is broken then)."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"harness: {' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def in_netns(name: str) -> contextlib.AbstractContextManager[None]:
    """Move the calling thread into a named netns; sockets opened inside stay bound to it."""
    return entered(name)


@dataclass
class VethPair:
    """`a` is the monitored side (agent attaches there), `b` the traffic side."""

    ns_a: str
    ns_b: str
    if_a: str = "mon0"
    if_b: str = "peer0"
    _socks: dict[str, socket.socket] = field(default_factory=dict)

    @property
    def ifindex_a(self) -> int:
        with in_netns(self.ns_a):
            return socket.if_nametoindex(self.if_a)

    def _sock(self, side: str) -> socket.socket:
        if side not in self._socks:
            ns, ifname = (self.ns_a, self.if_a) if side == "a" else (self.ns_b, self.if_b)
            with in_netns(ns):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.bind((ifname, 0))
            s.setblocking(False)
            self._socks[side] = s
        return self._socks[side]

    def send_to_a(self, frames: list[bytes]) -> None:
        """Send from b: the frames cross TC ingress (RX) on a."""
        s = self._sock("b")
        for f in frames:
            s.send(f)

    def send_from_a(self, frames: list[bytes]) -> None:
        """Send from a's packet socket: the frames cross TC egress (TX) on a."""
        s = self._sock("a")
        for f in frames:
            s.send(f)

    def receive_on(self, side: str, count: int, timeout: float = 2.0) -> list[bytes]:
        """Frames arriving on a side (PACKET_HOST etc.; our own sends are filtered out)."""
        s = self._sock(side)
        got: list[bytes] = []
        while len(got) < count:
            ready, _, _ = select.select([s], [], [], timeout)
            if not ready:
                break
            data, addr = s.recvfrom(65535)
            if addr[2] != socket.PACKET_OUTGOING:
                got.append(data)
        return got

    def drain_socket(self, side: str) -> None:
        s = self._sock(side)
        with contextlib.suppress(BlockingIOError):
            while True:
                s.recv(65535)

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()


@contextlib.contextmanager
def veth_pair(mtu: int = 9000) -> Iterator[VethPair]:
    tag = uuid.uuid4().hex[:8]
    pair = VethPair(ns_a=f"sn-{tag}-a", ns_b=f"sn-{tag}-b")
    created: list[str] = []
    try:
        for ns in (pair.ns_a, pair.ns_b):
            sh("ip", "netns", "add", ns)
            created.append(ns)
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip", "link", "add", f"sa{tag}", "mtu", str(mtu), "netns", pair.ns_a, "type", "veth",
            "peer", "name", f"sb{tag}", "mtu", str(mtu), "netns", pair.ns_b,
        )  # fmt: skip
        sh("ip", "-n", pair.ns_a, "link", "set", f"sa{tag}", "name", pair.if_a, "up")
        sh("ip", "-n", pair.ns_b, "link", "set", f"sb{tag}", "name", pair.if_b, "up")
        yield pair
    finally:
        pair.close()
        errors = []
        for ns in created:
            try:
                sh("ip", "netns", "del", ns)
            except RuntimeError as exc:
                errors.append(str(exc))
        if errors:
            print("teardown errors:", *errors, sep="\n  ")


@contextlib.contextmanager
def bpffs(tmp_path_root: str) -> Iterator[str]:
    """A private bpf filesystem mounted under a temp dir, so tests never share pins."""
    path = os.path.join(tmp_path_root, "bpffs")
    os.makedirs(path, exist_ok=True)
    sh("mount", "-t", "bpf", "bpf", path)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)

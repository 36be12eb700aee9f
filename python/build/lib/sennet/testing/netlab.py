"""Test-owned network namespaces, veth pairs, taps and bpffs mounts, and raw frames through them.

Everything here is created by whoever uses it and removed afterwards, also on
failure or Ctrl-C: nothing that already existed on the host is touched, and
names are random so parallel runs never meet. IPv6 is disabled in each
namespace before its devices exist and no addresses are configured, so no
router solicitation, DAD or ARP frame spoils an exact count: only the frames a
test sends cross its links.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sennet.common.errors import UserError
from sennet.common.netns import entered
from sennet.common.proc import run
from sennet.testing.errors import HarnessError

ETH_P_ALL = 0x0003
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def sh(*argv: str) -> str:
    """Run a set-up command; if it fails the harness is broken (HarnessError with its stderr)."""
    try:
        return run(argv).stdout.decode()
    except UserError as exc:
        raise HarnessError(f"harness: {exc.message}") from None


def _packet_socket(netns: str, ifname: str) -> socket.socket:
    """A raw packet socket bound to `ifname`, opened inside `netns` (it stays bound there)."""
    with entered(netns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((ifname, 0))
    return s


@contextlib.contextmanager
def namespace(prefix: str = "sn") -> Iterator[str]:
    """A fresh network namespace with IPv6 off and `lo` up; deleted on exit."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        for key in ("all", "default"):
            sh("ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        try:
            sh("ip", "netns", "del", name)
        except HarnessError as exc:
            print(f"teardown: {exc}")  # never mask the failure that brought us here


@dataclass
class VethPair:
    """Two namespaces joined by a veth pair: `a` is the monitored side (the agent attaches
    there), `b` the traffic side."""

    ns_a: str
    ns_b: str
    if_a: str = "mon0"
    if_b: str = "peer0"
    _socks: dict[str, socket.socket] = field(default_factory=dict, repr=False)

    @property
    def ifindex_a(self) -> int:
        with entered(self.ns_a):
            return socket.if_nametoindex(self.if_a)

    def _sock(self, side: str) -> socket.socket:
        if side not in self._socks:
            ns, ifname = (self.ns_a, self.if_a) if side == "a" else (self.ns_b, self.if_b)
            s = _packet_socket(ns, ifname)
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


def add_veth(pair: VethPair, mtu: int = 9000) -> None:
    """Create `pair`'s veth link in its (existing) namespaces, both ends up.

    Made under random names and renamed inside the namespaces, so the final names
    never meet the host's; the namespaces (and so the link) belong to the caller.
    """
    tag = uuid.uuid4().hex[:8]
    sh(
        "ip", "link", "add", f"sa{tag}", "mtu", str(mtu), "netns", pair.ns_a, "type", "veth",
        "peer", "name", f"sb{tag}", "mtu", str(mtu), "netns", pair.ns_b,
    )  # fmt: skip
    sh("ip", "-n", pair.ns_a, "link", "set", f"sa{tag}", "name", pair.if_a, "up")
    sh("ip", "-n", pair.ns_b, "link", "set", f"sb{tag}", "name", pair.if_b, "up")


@contextlib.contextmanager
def veth_pair(
    mtu: int = 9000, if_a: str = "mon0", if_b: str = "peer0", prefix: str = "sn"
) -> Iterator[VethPair]:
    """Two fresh namespaces joined by a veth pair (`if_a` in the first, `if_b` in the second)."""
    with namespace(prefix) as ns_a, namespace(prefix) as ns_b:
        pair = VethPair(ns_a, ns_b, if_a, if_b)
        add_veth(pair, mtu)
        try:
            yield pair
        finally:
            pair.close()


@dataclass
class Tap:
    """A tap device inside a test-owned namespace; its fd goes to QEMU as `-netdev tap,fd=N`.

    QEMU runs in the host namespace (so its user networking reaches the host's
    loopback, where the control plane listens) while the tap lives in the
    test's namespace: what the test sends on it, the guest receives.
    """

    netns: str
    ifname: str
    fd: int
    _sock: socket.socket | None = field(default=None, repr=False)

    def send(self, frames: list[bytes]) -> None:
        if self._sock is None:
            self._sock = _packet_socket(self.netns, self.ifname)
        for f in frames:
            self._sock.send(f)

    def close_socket(self) -> None:
        """Release our packet socket; the tap itself stays until its context exits."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@contextlib.contextmanager
def tap(mtu: int = 9000, ifname: str = "tapmon0", prefix: str = "snvm") -> Iterator[Tap]:
    """A tap in a fresh namespace, its fd inheritable for QEMU; all removed on exit."""
    with namespace(prefix) as ns:
        with entered(ns):  # the tap is created in the namespace its fd was opened in
            fd = os.open("/dev/net/tun", os.O_RDWR)
            try:
                ifr = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI)
                fcntl.ioctl(fd, TUNSETIFF, ifr)
            except OSError:
                os.close(fd)
                raise
        try:
            os.set_inheritable(fd, True)
            sh("ip", "-n", ns, "link", "set", ifname, "mtu", str(mtu), "up")
            handle = Tap(ns, ifname, fd)
            try:
                yield handle
            finally:
                handle.close_socket()
        finally:
            os.close(fd)


@contextlib.contextmanager
def bpffs(parent: Path | None = None) -> Iterator[Path]:
    """A private bpf filesystem on a fresh directory: throwaway pins that never meet another's."""
    path = Path(tempfile.mkdtemp(prefix="bpffs-", dir=parent))
    sh("mount", "-t", "bpf", "bpf", str(path))
    try:
        yield path
    finally:
        run(["umount", "-l", str(path)], check=False)
        with contextlib.suppress(OSError):
            path.rmdir()

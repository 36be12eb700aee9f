"""The monitored NIC's host side: a tap device inside a namespace the test owns.

QEMU runs in the host namespace (so user networking reaches the host's
loopback, where the control plane listens) but gets the tap as a file
descriptor opened inside the test's namespace. IPv6 is disabled there before
the tap exists, so no router solicitation or DAD frame spoils an exact count.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import uuid
from dataclasses import dataclass, field

from sennet.common.netns import entered

from harness.errors import HarnessError

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
ETH_P_ALL = 0x0003


def _ip(*argv: str) -> None:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HarnessError(f"ip {' '.join(argv)}: {result.stderr.strip()}")


@dataclass
class Tap:
    netns: str
    ifname: str
    fd: int
    _sock: socket.socket | None = field(default=None, repr=False)

    def socket(self) -> socket.socket:
        """A packet socket on the tap: what it sends, the guest receives on eth1."""
        if self._sock is None:
            with entered(self.netns):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.bind((self.ifname, 0))
            self._sock = s
        return self._sock

    def send(self, frames: list[bytes]) -> None:
        s = self.socket()
        for f in frames:
            s.send(f)

    def close_socket_only(self) -> None:
        """Release our packet socket but leave the tap (and its namespace) to its owner."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)


def create(mtu: int = 9000) -> Tap:
    netns = f"snvm-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", netns)
    try:
        for key in ("all", "default"):
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    netns,
                    "sysctl",
                    "-qw",
                    f"net.ipv6.conf.{key}.disable_ipv6=1",
                ],
                check=True,
            )
        ifname = "tapmon0"
        with entered(netns):
            fd = os.open("/dev/net/tun", os.O_RDWR)
            ifr = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        os.set_inheritable(fd, True)
        _ip("-n", netns, "link", "set", ifname, "mtu", str(mtu), "up")
        return Tap(netns, ifname, fd)
    except BaseException:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        raise

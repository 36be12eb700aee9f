"""The kernel's own view of a test link: interface counters, offloads, a real TCP transfer.

The data plane's counters are checked against what the kernel itself counted for the
interface (IFLA_STATS64 over netlink, the numbers `ip -s link` prints), which none of
our code computes. Offloads (GRO, TSO, VLAN tag insertion) are switched with the
ethtool ioctl so a test decides whether aggregates or metadata tags cross the hook.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.ethtool import Ethtool

from sennet.common.netns import entered
from sennet.common.retry import retry
from sennet.testing.errors import HarnessError
from sennet.testing.netlab import VethPair, sh

# Every TSO flavour: with any one left on, veth hands the peer whole aggregates.
TSO_FEATURES = (
    "tx-tcp-segmentation",
    "tx-tcp6-segmentation",
    "tx-tcp-ecn-segmentation",
    "tx-tcp-mangleid-segmentation",
)


@dataclass(frozen=True)
class LinkStats:
    """One interface's IFLA_STATS64 packet and byte counters."""

    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int

    def __sub__(self, other: LinkStats) -> LinkStats:
        return LinkStats(
            self.rx_packets - other.rx_packets,
            self.rx_bytes - other.rx_bytes,
            self.tx_packets - other.tx_packets,
            self.tx_bytes - other.tx_bytes,
        )


def link_stats(netns: str, ifname: str) -> LinkStats:
    """The kernel's counters of `ifname` (IFLA_STATS64, as `ip -s link` shows them)."""
    with entered(netns), IPRoute() as ipr:
        (link,) = ipr.link("get", ifname=ifname)
    s = link.get_attr("IFLA_STATS64")
    if s is None:
        raise HarnessError(f"harness: no IFLA_STATS64 for {ifname} in {netns}")
    return LinkStats(
        int(s["rx_packets"]), int(s["rx_bytes"]), int(s["tx_packets"]), int(s["tx_bytes"])
    )


def settled(netns: str, ifname: str, quiet: float = 0.2, timeout: float = 5.0) -> LinkStats:
    """The counters once nothing has crossed `ifname` for `quiet` seconds (in-flight ACKs
    and FINs included), so a comparison with them is not a race."""
    seen = [link_stats(netns, ifname)]

    def still(last: bool) -> LinkStats | None:
        time.sleep(quiet)
        now = link_stats(netns, ifname)
        if now == seen[-1]:
            return now
        seen.append(now)
        return None

    return retry(still, timeout, interval=0, what=f"{ifname} counters settling")


def set_features(netns: str, ifname: str, features: dict[str, bool]) -> None:
    """`ethtool -K` for `ifname`; fails if the kernel did not take every setting."""
    with entered(netns):
        et = Ethtool()  # its ioctl socket belongs to the namespace it was opened in
    try:
        current = et.get_features(ifname)
        for name, on in features.items():
            current.features[name].enable = on
        et.set_features(ifname, current)
        got = {n: et.get_features(ifname).features[n].enable for n in features}
    finally:
        et.close()
    if got != features:
        raise HarnessError(f"harness: {ifname}: asked for {features}, the kernel has {got}")


def address(net: VethPair, a: str = "10.9.0.1", b: str = "10.9.0.2") -> tuple[str, str]:
    """IPv4 addresses on both ends and permanent neighbour entries, so no ARP crosses."""
    sh("ip", "-n", net.ns_a, "addr", "add", f"{a}/24", "dev", net.if_a)
    sh("ip", "-n", net.ns_b, "addr", "add", f"{b}/24", "dev", net.if_b)
    sh("ip", "-n", net.ns_a, "neigh", "add", b, "lladdr", _mac(net.ns_b, net.if_b),
       "dev", net.if_a, "nud", "permanent")  # fmt: skip
    sh("ip", "-n", net.ns_b, "neigh", "add", a, "lladdr", _mac(net.ns_a, net.if_a),
       "dev", net.if_b, "nud", "permanent")  # fmt: skip
    return a, b


def _mac(netns: str, ifname: str) -> str:
    with entered(netns), IPRoute() as ipr:
        (link,) = ipr.link("get", ifname=ifname)
    return str(link.get_attr("IFLA_ADDRESS"))


def tcp_bulk(sender_ns: str, receiver_ns: str, dst: str, nbytes: int, port: int = 5001) -> int:
    """Send `nbytes` over one TCP connection from `sender_ns` to `dst` in `receiver_ns`,
    wait until the receiver has read them all and the connection is closed; return
    the bytes received."""
    with entered(receiver_ns):
        srv = socket.socket()
    with contextlib.closing(srv):
        srv.settimeout(10)
        srv.bind((dst, port))
        srv.listen(1)
        received: list[int] = []
        reader = threading.Thread(target=_read_all, args=(srv, received))
        reader.start()
        with entered(sender_ns):
            cl = socket.socket()
        with contextlib.closing(cl):
            cl.settimeout(10)
            cl.connect((dst, port))
            chunk = b"s" * 65536
            sent = 0
            while sent < nbytes:
                sent += cl.send(chunk[: nbytes - sent])
            cl.shutdown(socket.SHUT_WR)
            reader.join(timeout=30)
            with contextlib.suppress(OSError):
                cl.recv(1)  # the receiver's FIN: nothing more will cross after this
    if reader.is_alive() or received != [nbytes]:
        raise HarnessError(f"harness: TCP transfer: sent {nbytes}, received {received}")
    return nbytes


def _read_all(srv: socket.socket, out: list[int]) -> None:
    conn, _ = srv.accept()
    total = 0
    with conn:
        while data := conn.recv(1 << 20):
            total += len(data)
    out.append(total)

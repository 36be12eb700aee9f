"""TCP health on the real kernel: real sockets between namespaces, Sennet on `mon0`.

Each figure is compared with an oracle our code does not compute: the delay
imposed on the path, the outcome of every connect() a real socket made, the
SNMP counters of the namespace's own TCP stack (`nstat`), and a packet capture
on the far end of the link. Both loaders run every test. This kernel has no
netem, so delay and loss come from a user-space line (sennet.testing.delayline)
behind the far end of the monitored link: mon0's hooks see every frame before
the line delays or drops it, as they would with netem on the path.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.tcp_health import TcpHealthReader
from sennet.agent.telemetry import LatencyHistogram, TcpReport
from sennet.common.netns import entered
from sennet.common.retry import retry
from sennet.testing import delayline
from sennet.testing.linkstats import address, settled, tcp_bulk
from sennet.testing.netlab import VethPair, sh
from sennet.testing.tcpkit import capture, connect, connect_all, listener, nstat
from tests.datapath_harness import LOADERS, running

pytestmark = pytest.mark.kernel

DELAY_S = 0.040  # inside the bucket [32.768 ms, 65.536 ms)
BLACKHOLE = "10.9.0.99"  # on the link's subnet, owned by nobody


def bucket_of(seconds: float) -> int:
    """Index of the histogram bucket holding a duration (bucket i: below 2**i us)."""
    bounds = layout.hist_upper_bounds_s()
    return next((i for i, b in enumerate(bounds) if seconds < b), len(bounds))


@dataclass
class Tcp:
    net: VethPair
    a: str  # on mon0, where Sennet is attached (both hooks)
    b: str  # the far host: on peer0, or on srv0 beyond the line
    b_ns: str
    reader: TcpHealthReader

    def report(self) -> TcpReport:
        settled(self.net.ns_a, self.net.if_a)
        return self.reader.read()

    def pending_handshakes(self) -> int:
        fd = self.reader.expiry.handshakes_fd
        return sum(1 for _ in libbpf().keys(fd, layout.HS_KEY.itemsize))


@contextlib.contextmanager
def tcp(net: VethPair, pin_root: Path, loader: str, timeout_s: float = 10.0) -> Iterator[Tcp]:
    """The far host on peer0 itself: a plain link."""
    a, b = address(net)
    with running(net, pin_root / "p", loader) as dp:
        assert dp.manager.loaded is not None
        yield Tcp(net, a, b, net.ns_b, TcpHealthReader(dp.manager.loaded.map_fds, timeout_s))


@contextlib.contextmanager
def tcp_over_line(
    net: VethPair, pin_root: Path, loader: str, delay_s: float = 0.0, loss: float = 0.0
) -> Iterator[Tcp]:
    """The far host beyond a delaying, lossy line (see the module docstring)."""
    with delayline.delay_line(net, delay_s=delay_s, loss=loss) as line:
        a, b = "10.9.0.1", "10.9.0.2"
        delayline.address(net, line, a, b)
        with running(net, pin_root / "p", loader) as dp:
            assert dp.manager.loaded is not None
            yield Tcp(net, a, b, line.far_ns, TcpHealthReader(dp.manager.loaded.map_fds, 10.0))


def assert_all_in(h: LatencyHistogram, bucket: int, count: int) -> None:
    assert h.counts[bucket] == count, h.counts


@pytest.mark.parametrize("loader", LOADERS)
def test_handshake_rtt_falls_in_the_bucket_of_the_imposed_delay(
    net: VethPair, pin_root: Path, loader: str
) -> None:
    # The line delays everything the far host sends by 40 ms. Sennet on mon0 sees the
    # SYN -> SYN/ACK round trip to a far server, then SYN/ACK -> ACK to a far client.
    n_far_server, n_far_client = 5, 4
    with tcp_over_line(net, pin_root, loader, delay_s=DELAY_S) as t:
        with listener(t.b_ns, t.b, 7001) as accepted:
            outcomes = [connect(net.ns_a, t.b, 7001, 5.0) for _ in range(n_far_server)]
            assert outcomes == [0] * n_far_server
        with listener(net.ns_a, t.a, 7002) as accepted_here:
            outcomes = [connect(t.b_ns, t.a, 7002, 5.0) for _ in range(n_far_client)]
            assert outcomes == [0] * n_far_client
            time.sleep(2 * DELAY_S)  # the last client's ACK is still crossing the link
            assert len(accepted_here) == n_far_client
        assert len(accepted) == n_far_server
        report = t.report()
    delay = bucket_of(DELAY_S)
    assert delay == 16
    syn, synack = report.syn_rtt, report.synack_rtt
    # Far server: SYN -> SYN/ACK carries the delay. Near server: a local reply, far below it.
    assert_all_in(syn, delay, n_far_server)
    assert sum(syn.counts[:delay]) == n_far_client
    assert syn.count == n_far_server + n_far_client
    assert syn.sum_s >= n_far_server * DELAY_S
    # Far client: SYN/ACK -> ACK carries the delay; the near client answers at once.
    assert_all_in(synack, delay, n_far_client)
    assert sum(synack.counts[:delay]) == n_far_server
    assert synack.count == n_far_server + n_far_client
    assert synack.sum_s >= n_far_client * DELAY_S
    assert report.attempts_unanswered_total == 0
    assert t.pending_handshakes() == 0


@pytest.mark.parametrize("loader", LOADERS)
def test_a_refused_connect_is_one_reset_in_the_direction_it_crossed(
    net: VethPair, pin_root: Path, loader: str
) -> None:
    with tcp(net, pin_root, loader) as t:
        before_a = nstat(net.ns_a, "TcpOutRsts")["TcpOutRsts"]
        before_b = nstat(net.ns_b, "TcpOutRsts")["TcpOutRsts"]
        # To a closed port on the far side: its RST arrives on mon0 (rx).
        to_far = connect_all(net.ns_a, t.b, 7003, 3, 5.0)
        # To a closed port on our side: our RST leaves by mon0 (tx).
        to_near = connect_all(net.ns_b, t.a, 7004, 5, 5.0)
        report = t.report()
        sent_by_b = nstat(net.ns_b, "TcpOutRsts")["TcpOutRsts"] - before_b
        sent_by_a = nstat(net.ns_a, "TcpOutRsts")["TcpOutRsts"] - before_a
        assert t.pending_handshakes() == 0  # a RST answers the attempt
    assert to_far == [errno.ECONNREFUSED] * 3
    assert to_near == [errno.ECONNREFUSED] * 5
    assert (sent_by_b, sent_by_a) == (3, 5)
    assert report.resets_by_direction == {"rx": sent_by_b, "tx": sent_by_a}
    assert report.attempts_unanswered_total == 0


@pytest.mark.parametrize("loader", LOADERS)
def test_unanswered_attempts_expire_and_syn_retransmits_match_nstat(
    net: VethPair, pin_root: Path, loader: str
) -> None:
    # BLACKHOLE resolves to peer0's address, so the SYNs leave mon0; the far side owns no
    # such address and does not forward, so nothing ever answers.
    with tcp(net, pin_root, loader, timeout_s=1.0) as t:
        peer_mac = delayline.mac(net.ns_b, net.if_b)
        sh("ip", "-n", net.ns_a, "neigh", "add", BLACKHOLE, "lladdr", peer_mac,
           "dev", net.if_a, "nud", "permanent")  # fmt: skip
        before = nstat(net.ns_a, "TcpRetransSegs")["TcpRetransSegs"]
        rsts_before = nstat(net.ns_b, "TcpOutRsts")["TcpOutRsts"]
        with listener(net.ns_b, t.b, 7005) as accepted:
            completed = [connect(net.ns_a, t.b, 7005, 5.0) for _ in range(2)]
            retry(lambda _last: len(accepted) == 2 or None, 5.0, what="both accepted")
        refused = connect_all(net.ns_a, t.b, 7006, 2, 5.0)
        # 1.5 s: past the kernel's 1 s initial RTO, so each attempt retransmits its SYN.
        silent = connect_all(net.ns_a, BLACKHOLE, 7007, 3, 1.5)
        report = t.report()
        retrans = nstat(net.ns_a, "TcpRetransSegs")["TcpRetransSegs"] - before
        syn_retried = t.reader.counters()[layout.TcpCounter.SYN_RETRIED]
        rsts = nstat(net.ns_b, "TcpOutRsts")["TcpOutRsts"] - rsts_before
        assert t.pending_handshakes() == 0
        assert t.reader.read().attempts_unanswered_total == 3  # counted once, then forgotten
    assert completed == [0, 0]
    assert refused == [errno.ECONNREFUSED] * 2
    assert silent == [errno.ETIMEDOUT] * 3
    assert report.attempts_unanswered_total == silent.count(errno.ETIMEDOUT)
    assert retrans >= 3  # every silent attempt retransmitted its SYN at least once
    assert report.retransmits_total == retrans
    assert syn_retried == retrans
    assert rsts == 2  # the refusals; the completed ones closed with FIN
    assert report.resets_by_direction == {"rx": rsts, "tx": 0}


def zero_window_segments(frames: list[bytes]) -> int:
    """Segments in a capture whose window field is 0, RSTs aside (the oracle's own parse)."""
    n = 0
    for raw in frames:
        pkt = Ether(raw)
        if TCP in pkt and pkt[TCP].window == 0 and not pkt[TCP].flags.R:
            n += 1
    return n


@pytest.mark.parametrize("loader", LOADERS)
def test_zero_window_advertisements_equal_a_capture_of_the_same_run(
    net: VethPair, pin_root: Path, loader: str
) -> None:
    # The receiver never reads and has a small buffer: it advertises window 0 and answers
    # the sender's zero-window probes with window 0 until it closes (a RST: not counted).
    with tcp(net, pin_root, loader) as t:
        with capture(net.ns_b, net.if_b) as cap:
            with entered(net.ns_a):
                s = socket.socket()
            with contextlib.closing(s), listener(net.ns_b, t.b, 7008, rcvbuf=4096) as accepted:
                s.connect((t.b, 7008))
                s.setblocking(False)
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    with contextlib.suppress(BlockingIOError):
                        s.send(b"z" * 65536)
                    time.sleep(0.01)
                assert len(accepted) == 1
                # leaving the listener closes the unread receiver first: a RST, and the
                # sender stops probing
        report = t.report()
    oracle = zero_window_segments(cap.frames)
    assert oracle > 0
    assert report.zero_windows_total == oracle


@pytest.mark.parametrize("loader", LOADERS)
def test_retransmissions_under_loss_equal_the_senders_nstat(
    net: VethPair, pin_root: Path, loader: str
) -> None:
    # The line drops 2% of what mon0 sends, after TC egress has seen it: Sennet sees every
    # transmission, the original and the retransmission alike. The line turned checksum
    # offload and so TSO off on mon0; the stack still builds GSO aggregates and segments
    # them after TC egress, so the hook sees aggregates, each counted as its segments.
    with tcp_over_line(net, pin_root, loader, loss=0.02) as t:
        before = nstat(net.ns_a, "TcpRetransSegs")["TcpRetransSegs"]
        tcp_bulk(net.ns_a, t.b_ns, t.b, 8 << 20, port=7009)
        report = t.report()
        retrans = nstat(net.ns_a, "TcpRetransSegs")["TcpRetransSegs"] - before
    assert retrans > 0
    assert report.retransmits_total == retrans

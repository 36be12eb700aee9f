"""TCP health as the data plane sees it: resets, retransmissions, zero windows, handshakes.

Every figure is cumulative since the pinned maps were created, like the
interface counters: the per-CPU TCP_COUNTERS slots summed over CPUs, and the
two handshake RTT histograms (SYN -> SYN/ACK, the tap-to-server round trip;
SYN/ACK -> ACK, the tap-to-client one) from HISTOGRAMS. Reading also expires
handshakes past the timeout, so it runs once per interval (Insights.refresh).
"""

from __future__ import annotations

from sennet.agent.datapath import layout
from sennet.agent.datapath.histograms import HistogramReader
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.record import u64_sum
from sennet.agent.tcp_handshakes import HandshakeExpiry
from sennet.agent.telemetry import TcpReport


def read_counters(fd: int, ncpus: int) -> dict[layout.TcpCounter, int]:
    """Every TCP_COUNTERS slot, summed over CPUs (read-only: `sennet-agent status` uses it)."""
    lb = libbpf()
    out: dict[layout.TcpCounter, int] = {}
    for slot in layout.TcpCounter:
        out[slot] = u64_sum(lb.lookup(fd, int(slot).to_bytes(4, "little"), 8 * ncpus), ncpus)
    return out


class TcpHealthReader:
    def __init__(self, map_fds: dict[str, int], handshake_timeout_s: float) -> None:
        self.counters_fd = map_fds[layout.MAP_TCP_COUNTERS]
        self.histograms = HistogramReader(map_fds[layout.MAP_HISTOGRAMS])
        self.expiry = HandshakeExpiry(
            map_fds[layout.MAP_HANDSHAKES], self.counters_fd, handshake_timeout_s
        )
        self.ncpus = libbpf().possible_cpus()

    def counters(self) -> dict[layout.TcpCounter, int]:
        """Every TCP_COUNTERS slot, summed over CPUs."""
        return read_counters(self.counters_fd, self.ncpus)

    def read(self, now_ns: int | None = None) -> TcpReport:
        """Expire stale handshakes, then report (the expired ones are in this report)."""
        self.expiry.expire(now_ns)
        c = self.counters()
        return TcpReport(
            syn_rtt=self.histograms.read(layout.Histogram.TCP_SYN),
            synack_rtt=self.histograms.read(layout.Histogram.TCP_SYNACK),
            attempts_unanswered_total=c[layout.TcpCounter.UNANSWERED],
            resets_by_direction={
                "rx": c[layout.TcpCounter.RST_RX],
                "tx": c[layout.TcpCounter.RST_TX],
            },
            retransmits_total=c[layout.TcpCounter.RETRANS],
            zero_windows_total=c[layout.TcpCounter.ZERO_WINDOW],
            malformed_total=c[layout.TcpCounter.MALFORMED],
        )

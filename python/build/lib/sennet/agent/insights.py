"""Flows, microbursts, DNS and TCP health: read once per interval, kept for every reader.

Per-interval figures (top talkers, microbursts) are differences between two
reads, so they must be taken exactly once per interval: the run loop calls
`refresh()` before each heartbeat, and a /metrics scrape in between sees the
latest values rather than taking a read of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sennet.agent.bursts import BurstReader
from sennet.agent.config import AgentConfig
from sennet.agent.datapath import layout
from sennet.agent.datapath.manager import Attached
from sennet.agent.dns import DnsReader
from sennet.agent.flows import FlowTracker
from sennet.agent.tcp_health import TcpHealthReader
from sennet.agent.telemetry import DnsReport, FlowReport, Microburst, TcpReport


@dataclass(frozen=True)
class Latest:
    flows: FlowReport | None = None
    microbursts: tuple[Microburst, ...] = ()
    dns: DnsReport | None = None
    tcp: TcpReport | None = None


class Insights:
    def __init__(self, map_fds: dict[str, int], cfg: AgentConfig) -> None:
        self.map_fds = map_fds
        self.cfg = cfg
        self.latest = Latest()
        self.dns = DnsReader(map_fds, cfg.dns_timeout, cfg.dns_top_names)
        self.tcp = TcpHealthReader(map_fds, cfg.tcp_handshake_timeout)
        self.flows = FlowTracker(
            map_fds[layout.MAP_FLOWS],
            map_fds[layout.MAP_FLOW_STATS],
            cfg.flow_top_n,
            cfg.flow_idle_timeout_s,
        )
        self.bursts = BurstReader(map_fds[layout.MAP_BURSTS], map_fds[layout.MAP_BURST_EPOCH])

    def refresh(self, attached: Sequence[Attached]) -> None:
        """Read every feature's maps once; the interval ends now."""
        names = {a.ifindex: a.ifname for a in attached}
        self.latest = Latest(
            flows=self.flows.read(names),
            microbursts=self.bursts.read(attached),
            dns=self.dns.read(),
            tcp=self.tcp.read(),
        )

"""What the agent learns beyond the interface counters: flows, microbursts, DNS, TCP health.

These are the values the readers (`flows`, `dns`, `tcp_health`) produce once
per interval and every way out carries: the heartbeat, the agent's own
/metrics, OTLP later. Cumulative fields (`*_total`, histograms) count since the
data plane's maps were created, like the interface counters, so a lost
heartbeat loses nothing; per-interval fields (top talkers, microbursts) describe
the interval that ended at `interval_end_ns` and are bounded in size whatever
the traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LatencyHistogram:
    """Fixed log2 buckets from the data plane, cumulative.

    `counts[i]` holds observations below `bounds_s[i]` and not below the
    previous bound (per bucket, not cumulative across buckets); the last entry
    of `counts` (one more than `bounds_s`) is everything above the last bound.
    """

    bounds_s: tuple[float, ...]
    counts: tuple[int, ...]
    sum_s: float

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class Talker:
    """One flow (one direction of a conversation, on one interface) and its interval."""

    ifname: str
    direction: str  # "rx" (TC ingress) or "tx" (TC egress)
    ip_version: int
    l4_proto: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    vlan_id: int
    packets: int  # in the interval
    bytes: int  # in the interval, on the wire
    tcp_flags: int  # OR of all flags seen over the flow's life


@dataclass(frozen=True)
class FlowReport:
    active: int  # flows in the table at the read
    created_total: int  # flows the data plane created
    ended_total: int  # flows the agent removed after FIN/RST or idle timeout
    lost_total: int  # flows created and evicted by the LRU before the agent read them
    top_talkers: tuple[Talker, ...] = ()  # by bytes in the interval, at most N
    capacity: int = 0  # the table's max_entries, set at load
    evicted_total: int = 0  # flows the agent had read, then evicted by the LRU before they ended


@dataclass(frozen=True)
class Microburst:
    """The busiest window of each length on one interface and direction, within the interval."""

    ifname: str
    direction: str  # "rx" or "tx"
    window_ms: int  # 1 or 10
    max_packets: int
    max_bytes: int


@dataclass(frozen=True)
class NameCount:
    name: str  # query name as text, lower case, no trailing dot ("." for the root)
    count: int


@dataclass(frozen=True)
class DnsReport:
    queries_by_type: dict[str, int]  # "A", "AAAA", ..., "other"; cumulative
    responses_by_rcode: dict[str, int]  # NOERROR, NXDOMAIN, SERVFAIL, REFUSED, other
    latency: LatencyHistogram
    unanswered_total: int  # queries with no response within the timeout
    malformed_total: int
    top_queried: tuple[NameCount, ...] = ()
    top_failing: tuple[NameCount, ...] = ()  # responses other than NOERROR, by name


@dataclass(frozen=True)
class TcpReport:
    syn_rtt: LatencyHistogram  # SYN -> SYN/ACK: the path from the tap to the server and back
    synack_rtt: LatencyHistogram  # SYN/ACK -> ACK: the path from the tap to the client and back
    attempts_unanswered_total: int  # SYN never followed by a SYN/ACK within the timeout
    resets_by_direction: dict[str, int] = field(default_factory=dict)  # "rx"/"tx"
    retransmits_total: int = 0  # segments whose sequence did not advance
    zero_windows_total: int = 0
    malformed_total: int = 0

"""A snapshot carrying every report (flows, microbursts, DNS, TCP), with known values.

The heartbeat mapping, the agent's /metrics and the control plane are each
checked against these numbers: they are the traffic's own counts as a test
states them, not something our code computed. Values are distinct per field
(a swapped field shows), names include characters the exposition must escape,
and one talker is IPv6 on a VLAN.
"""

from __future__ import annotations

from sennet.agent.sinks.heartbeat_message import snapshot_to_request
from sennet.agent.snapshot import InterfaceCounters, Snapshot
from sennet.agent.telemetry import (
    DnsReport,
    FlowReport,
    LatencyHistogram,
    Microburst,
    NameCount,
    Talker,
    TcpReport,
)
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

# The data plane's buckets: below 2**i microseconds for i < 27, then +Inf (layout.HIST_BUCKETS).
LOG2_BOUNDS_S = tuple((1 << i) / 1e6 for i in range(27))


def histogram(seed: int) -> LatencyHistogram:
    """A histogram on the data plane's bounds with a few filled buckets and an exact ns sum."""
    counts = [0] * (len(LOG2_BOUNDS_S) + 1)
    counts[seed % 5 + 8] = 3 * seed  # around 256-4096 us
    counts[seed % 5 + 12] = seed + 1
    counts[-1] = 1  # one beyond the last bound
    return LatencyHistogram(LOG2_BOUNDS_S, tuple(counts), sum_s=(123_456_789 * seed + 7) / 1e9)


TALKERS = (
    Talker("eth1", "rx", 4, 6, "10.0.0.1", "10.0.0.2", 40000, 443, 0, 120, 150_000, 0x1B),
    Talker("eth1", "tx", 6, 17, "fd00::1", "fd00::53", 5353, 53, 42, 9, 1_206, 0),
    Talker("eth2", "rx", 4, 1, "192.0.2.7", "192.0.2.9", 0, 0, 0, 3, 294, 0),
)


def full_snapshot(scale: int = 1) -> Snapshot:
    """Every report filled; `scale` multiplies the cumulative totals (a later heartbeat)."""
    s = scale
    return Snapshot(
        agent_version="0.1.0",
        kernel_version="6.18.0",
        uptime_s=42.5,
        loader="libbpf",
        interfaces=(InterfaceCounters("eth1", 3, 11 * s, 1100 * s, 7 * s, 700 * s),),
        events_by_kind={"large_packet": 2 * s},
        ringbuf_drops_by_kind={},
        events_consumed=2 * s,
        flows=FlowReport(
            active=37,
            created_total=1000 * s,
            ended_total=900 * s,
            lost_total=63 * s,
            top_talkers=TALKERS,
            capacity=65536,
            evicted_total=29 * s,
        ),
        microbursts=(
            Microburst("eth1", "rx", 1, 17, 25_500),
            Microburst("eth1", "rx", 10, 90, 134_000),
            Microburst("eth1", "tx", 1, 4, 600),
            Microburst("eth1", "tx", 10, 12, 1_800),
        ),
        dns=DnsReport(
            queries_by_type={"A": 40 * s, "AAAA": 30 * s, "other": 2 * s},
            responses_by_rcode={
                "NOERROR": 60 * s,
                "NXDOMAIN": 5 * s,
                "SERVFAIL": 3 * s,
                "REFUSED": 1 * s,
                "other": 0,
            },
            latency=histogram(s),
            unanswered_total=4 * s,
            malformed_total=6 * s,
            top_queried=(NameCount("example.com", 25), NameCount('we"ird\\name.test', 9)),
            top_failing=(NameCount("missing.example", 5), NameCount(".", 1)),
        ),
        tcp=TcpReport(
            syn_rtt=histogram(s + 1),
            synack_rtt=histogram(s + 2),
            attempts_unanswered_total=8 * s,
            resets_by_direction={"rx": 3 * s, "tx": 2 * s},
            retransmits_total=14 * s,
            zero_windows_total=1 * s,
            malformed_total=0,
        ),
    )


def full_request(agent_id: str, scale: int = 1) -> pb.HeartbeatRequest:
    """The heartbeat an agent sends for `full_snapshot(scale)` (no events)."""
    return snapshot_to_request(agent_id, full_snapshot(scale), [], 0)

"""Flows, microbursts, DNS and TCP health in an agent's view: counter series and gauges.

The cumulative parts of a heartbeat (flow, DNS and TCP totals, histogram
buckets and sums) become counter series like the interface counters, so they
get the same reset handling (`fleet.advance`): a monotonic total that never
moves backwards, an exact `rate()`, and the same 2^63-1 and series-count
bounds. A histogram is one series per bucket (per-bucket counts, named by the
bucket's `le` label) plus one for its sum in whole nanoseconds (the data
plane's own unit, so the total stays an exact integer); the exporter sums the
buckets' totals into cumulative `le` counts, which therefore stay consistent
(monotonic in `le`, `+Inf` equal to `_count`) across any mix of resets.

The per-interval parts (active flows, table size, top talkers, microburst
maxima, top names) are gauges of the latest heartbeat: `Telemetry`, immutable,
replaced by each heartbeat and absent for an agent that does not send them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sennet.common.prom_histogram import le_labels
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

DIRECTION = {pb.DIRECTION_RX: "rx", pb.DIRECTION_TX: "tx"}
DIRECTION_VALUE = {v: k for k, v in DIRECTION.items()}

# Counter series families (SeriesKey.family) with the request field each comes from.
FLOW_COUNTERS = {
    "flow_created": "created_total",
    "flow_ended": "ended_total",
    "flow_lost": "lost_total",
    "flow_evicted": "evicted_total",
}
DNS_COUNTERS = {"dns_unanswered": "unanswered_total", "dns_malformed": "malformed_total"}
DNS_MAPS = {"dns_queries": "queries_by_type", "dns_responses": "responses_by_rcode"}
TCP_COUNTERS = {
    "tcp_attempts_unanswered": "attempts_unanswered_total",
    "tcp_retransmits": "retransmits_total",
    "tcp_zero_windows": "zero_windows_total",
    "tcp_malformed": "malformed_total",
}
TCP_MAPS = {"tcp_resets": "resets_by_direction"}
# histogram family -> (summary field in the request, histogram field in it)
HISTOGRAMS = {
    "dns_latency": ("dns", "latency"),
    "tcp_syn_rtt": ("tcp", "syn_rtt"),
    "tcp_synack_rtt": ("tcp", "synack_rtt"),
}
SUM = "_sum"  # suffix of a histogram's sum family: dns_latency_sum
FAMILIES = frozenset(
    [*FLOW_COUNTERS, *DNS_COUNTERS, *DNS_MAPS, *TCP_COUNTERS, *TCP_MAPS]
    + [f for h in HISTOGRAMS for f in (h, h + SUM)]
)


def sum_ns(h: pb.LatencyHistogram) -> int:
    """A histogram's sum as the integer nanoseconds the data plane counted."""
    return round(h.sum_seconds * 1e9)


def readings(req: pb.HeartbeatRequest) -> Iterator[tuple[str, str, int]]:
    """(family, name, raw cumulative value) for every counter the new parts carry,
    histograms aside (`histogram_readings`)."""
    if req.HasField("flows"):
        for family, field in FLOW_COUNTERS.items():
            yield family, "", getattr(req.flows, field)
    for summary, counters, maps in (
        ("dns", DNS_COUNTERS, DNS_MAPS),
        ("tcp", TCP_COUNTERS, TCP_MAPS),
    ):
        if not req.HasField(summary):
            continue
        msg = getattr(req, summary)
        for family, field in counters.items():
            yield family, "", getattr(msg, field)
        for family, field in maps.items():
            for name, value in getattr(msg, field).items():
                yield family, name, value


def histogram_readings(
    req: pb.HeartbeatRequest,
) -> Iterator[tuple[str, tuple[float, ...], Sequence[int], int]]:
    """(family, bounds, per-bucket counts, sum in ns) of every histogram the heartbeat carries.

    Whole histograms rather than one reading per bucket: the caller maps a
    bound list to its bucket keys once per distinct list (`fleet.py`), which
    spares a Python step per bucket (84 per heartbeat with every part).
    """
    for family, (summary, field) in HISTOGRAMS.items():
        if not req.HasField(summary) or not getattr(req, summary).HasField(field):
            continue
        h = getattr(getattr(req, summary), field)
        yield family, tuple(h.bounds_seconds), h.counts, sum_ns(h)


def bucket_names(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The series names of a histogram's buckets: their `le` labels, `+Inf` last."""
    return le_labels(bounds)


class TalkerRow(NamedTuple):
    interface: str
    direction: str  # "rx" or "tx"
    ip_version: int
    l4_proto: int
    src_addr: str
    dst_addr: str
    src_port: int
    dst_port: int
    vlan_id: int
    packets: int
    bytes: int
    tcp_flags: int


class BurstRow(NamedTuple):
    interface: str
    direction: str
    window_ms: int
    max_packets: int
    max_bytes: int


class NameRow(NamedTuple):
    name: str
    hits: int  # NameCount.count (a NamedTuple cannot have a field named count)


@dataclass(frozen=True)
class Telemetry:
    """The gauges of an agent's latest heartbeat (None / empty: not reported)."""

    flows_active: int | None = None
    flows_capacity: int | None = None
    talkers: tuple[TalkerRow, ...] = ()
    bursts: tuple[BurstRow, ...] = ()
    top_queried: tuple[NameRow, ...] = ()
    top_failing: tuple[NameRow, ...] = ()


def telemetry_of(req: pb.HeartbeatRequest) -> Telemetry | None:
    """The gauges a heartbeat carries, or None when it has none of the new parts."""
    if not (req.HasField("flows") or req.HasField("dns") or req.microbursts):
        return None
    f = req.flows
    has_flows = req.HasField("flows")
    return Telemetry(
        flows_active=f.active if has_flows else None,
        flows_capacity=f.capacity if has_flows else None,
        talkers=tuple(
            TalkerRow(
                t.interface,
                DIRECTION[t.direction],
                t.ip_version,
                t.l4_proto,
                t.src_addr,
                t.dst_addr,
                t.src_port,
                t.dst_port,
                t.vlan_id,
                t.packets,
                t.bytes,
                t.tcp_flags,
            )
            for t in f.top_talkers
        ),
        bursts=tuple(
            BurstRow(m.interface, DIRECTION[m.direction], m.window_ms, m.max_packets, m.max_bytes)
            for m in req.microbursts
        ),
        top_queried=tuple(NameRow(n.name, n.count) for n in req.dns.top_queried),
        top_failing=tuple(NameRow(n.name, n.count) for n in req.dns.top_failing),
    )

"""The agent's /metrics families for flows, microbursts, DNS and TCP health.

Built at scrape time from the latest per-interval reports in the snapshot
(`telemetry.py`), beside the interface families in `readout.py`. Cumulative
figures are counters; the active flow count, the table size, microburst maxima
and the top lists are gauges of the last interval. Top lists carry their rank
as a label with the flow's tuple (or the name), so each family holds at most N
series whatever the traffic; a tuple that leaves the top N simply stops being
exported. Latency histograms become real Prometheus histograms (cumulative
`le` buckets in seconds, `_sum`, `_count`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sennet.agent.exposition import CounterFamily, Family, GaugeFamily, HistogramFamily
from sennet.agent.snapshot import Snapshot
from sennet.agent.telemetry import (
    DnsReport,
    FlowReport,
    LatencyHistogram,
    Microburst,
    NameCount,
    TcpReport,
)
from sennet.common.prom_histogram import cumulative

TALKER_LABELS = ["rank", "interface", "direction", "proto", "src", "dst", "sport", "dport", "vlan"]


def families(snap: Snapshot) -> Iterator[Family]:
    """Every family the snapshot's reports give (none for a feature not reported)."""
    if snap.flows is not None:
        yield from _flows(snap.flows)
    if snap.microbursts:
        yield from _microbursts(snap.microbursts)
    if snap.dns is not None:
        yield from _dns(snap.dns)
    if snap.tcp is not None:
        yield from _tcp(snap.tcp)


def _counter(name: str, doc: str, value: int) -> CounterFamily:
    return CounterFamily(name, doc, value=value)


def _histogram(name: str, doc: str, h: LatencyHistogram) -> HistogramFamily:
    family = HistogramFamily(name, doc)
    family.add_metric([], cumulative(h.bounds_s, h.counts), h.sum_s)
    return family


def _flows(f: FlowReport) -> Iterator[Family]:
    yield GaugeFamily(
        "sennet_agent_flow_active", "Flows in the flow table at the last read", value=f.active
    )
    yield GaugeFamily(
        "sennet_agent_flow_capacity", "Flow table size (max entries, set at load)", value=f.capacity
    )
    yield _counter("sennet_agent_flow_created", "Flows the data plane created", f.created_total)
    yield _counter(
        "sennet_agent_flow_ended", "Flows removed after FIN/RST or the idle timeout", f.ended_total
    )
    yield _counter(
        "sennet_agent_flow_lost",
        "Flows evicted by the LRU before the agent read them (lost track of)",
        f.lost_total,
    )
    yield _counter(
        "sennet_agent_flow_evicted",
        "Flows the agent had read, evicted by the LRU before they ended",
        f.evicted_total,
    )
    octets = GaugeFamily(
        "sennet_agent_flow_top_talker_bytes",
        "Bytes in the last interval of the top flows by bytes (rank 1 = largest)",
        labels=TALKER_LABELS,
    )
    packets = GaugeFamily(
        "sennet_agent_flow_top_talker_packets",
        "Packets in the last interval of the top flows by bytes (rank as in ..._bytes)",
        labels=TALKER_LABELS,
    )
    for rank, t in enumerate(f.top_talkers, start=1):
        labels = [
            str(rank),
            t.ifname,
            t.direction,
            str(t.l4_proto),
            t.saddr,
            t.daddr,
            str(t.sport),
            str(t.dport),
            str(t.vlan_id),
        ]
        octets.add_metric(labels, t.bytes)
        packets.add_metric(labels, t.packets)
    yield octets
    yield packets


def _microbursts(bursts: Sequence[Microburst]) -> Iterator[Family]:
    labels = ["interface", "direction", "window"]
    packets = GaugeFamily(
        "sennet_agent_flow_microburst_max_packets",
        "Most packets in any one window of the last interval",
        labels=labels,
    )
    octets = GaugeFamily(
        "sennet_agent_flow_microburst_max_bytes",
        "Most bytes in any one window of the last interval",
        labels=labels,
    )
    for m in bursts:
        key = [m.ifname, m.direction, f"{m.window_ms}ms"]
        packets.add_metric(key, m.max_packets)
        octets.add_metric(key, m.max_bytes)
    yield packets
    yield octets


def _top_names(name: str, doc: str, names: Sequence[NameCount]) -> GaugeFamily:
    family = GaugeFamily(name, doc, labels=["rank", "qname"])
    for rank, n in enumerate(names, start=1):
        family.add_metric([str(rank), n.name], n.count)
    return family


def _dns(d: DnsReport) -> Iterator[Family]:
    queries = CounterFamily(
        "sennet_agent_dns_queries", "DNS queries seen, by query type", labels=["type"]
    )
    for qtype, n in sorted(d.queries_by_type.items()):
        queries.add_metric([qtype], n)
    yield queries
    responses = CounterFamily(
        "sennet_agent_dns_responses", "DNS responses seen, by rcode", labels=["rcode"]
    )
    for rcode, n in sorted(d.responses_by_rcode.items()):
        responses.add_metric([rcode], n)
    yield responses
    yield _histogram(
        "sennet_agent_dns_latency_seconds",
        "Query to response, matched by client address, port and transaction id",
        d.latency,
    )
    yield _counter(
        "sennet_agent_dns_unanswered",
        "Queries with no response within the timeout",
        d.unanswered_total,
    )
    yield _counter(
        "sennet_agent_dns_malformed", "DNS messages the parser refused", d.malformed_total
    )
    yield _top_names(
        "sennet_agent_dns_top_queried", "Most queried names (rank 1 = most)", d.top_queried
    )
    yield _top_names(
        "sennet_agent_dns_top_failing",
        "Names with the most responses other than NOERROR (rank 1 = most)",
        d.top_failing,
    )


def _tcp(t: TcpReport) -> Iterator[Family]:
    yield _histogram(
        "sennet_agent_tcp_syn_rtt_seconds",
        "SYN to SYN/ACK: the path from the tap point to the server and back",
        t.syn_rtt,
    )
    yield _histogram(
        "sennet_agent_tcp_synack_rtt_seconds",
        "SYN/ACK to ACK: the path from the tap point to the client and back",
        t.synack_rtt,
    )
    yield _counter(
        "sennet_agent_tcp_attempts_unanswered",
        "SYNs never answered by a SYN/ACK within the timeout",
        t.attempts_unanswered_total,
    )
    resets = CounterFamily(
        "sennet_agent_tcp_resets", "RST segments, by the hook that saw them", labels=["direction"]
    )
    for direction, n in sorted(t.resets_by_direction.items()):
        resets.add_metric([direction], n)
    yield resets
    yield _counter(
        "sennet_agent_tcp_retransmits",
        "Data segments whose sequence number did not advance",
        t.retransmits_total,
    )
    yield _counter(
        "sennet_agent_tcp_zero_windows", "Zero-window advertisements", t.zero_windows_total
    )
    yield _counter(
        "sennet_agent_tcp_malformed", "TCP headers the parser refused", t.malformed_total
    )

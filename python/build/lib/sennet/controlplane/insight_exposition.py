"""The sennet_flow_*, sennet_dns_* and sennet_tcp_* families, per agent, two ways that agree.

`agent_samples` turns one committed view into its samples, grouped by family:
counter totals from the view's series (with `fleet.py`'s reset handling),
histograms as cumulative `le` buckets in seconds with `_sum` and `_count`, and
the gauges of the latest heartbeat (`fleet_insights.Telemetry`). Labels are
bounded: top talkers and top names carry their rank (1..N, N capped by the
control plane's max_talkers and max_dns_names) beside the tuple or name, so an
agent contributes at most N series per top-list family whatever its traffic;
DNS types (at most 32), rcodes (5) and directions (2) are closed or capped
sets.

`InsightCollector` is the prometheus-client reference path; the fast path
/metrics serves is `insight_render.py`, and a test checks the two give the
same samples.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import NamedTuple

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from sennet.controlplane import fleet_insights as fi
from sennet.controlplane.fleet import AgentView, Fleet

Labels = tuple[tuple[str, str], ...]


class Sample(NamedTuple):
    suffix: str  # "" or, for histograms, "_bucket", "_count", "_sum"
    labels: Labels  # beyond `agent`
    value: int | float


class Family(NamedTuple):
    name: str  # as exposed (counters end in _total)
    type: str
    help: str


_TALKER = "by bytes in the last interval (rank 1 = largest; labels: the flow's tuple)"
FAMILIES = (
    Family("sennet_flow_active", "gauge", "Flows in the agent's flow table at its last read."),
    Family("sennet_flow_capacity", "gauge", "Size of the agent's flow table (max entries)."),
    Family("sennet_flow_created_total", "counter", "Flows the agent's data plane created."),
    Family("sennet_flow_ended_total", "counter", "Flows ended by FIN/RST or the idle timeout."),
    Family(
        "sennet_flow_lost_total",
        "counter",
        "Flows evicted by the LRU before the agent read them (lost track of).",
    ),
    Family(
        "sennet_flow_evicted_total",
        "counter",
        "Flows the agent had read, evicted by the LRU before they ended.",
    ),
    Family("sennet_flow_top_talker_bytes", "gauge", f"Bytes of the top flows {_TALKER}."),
    Family("sennet_flow_top_talker_packets", "gauge", f"Packets of the top flows {_TALKER}."),
    Family(
        "sennet_flow_microburst_max_packets",
        "gauge",
        "Most packets in any one window (1ms or 10ms) of the last interval.",
    ),
    Family(
        "sennet_flow_microburst_max_bytes",
        "gauge",
        "Most bytes in any one window (1ms or 10ms) of the last interval.",
    ),
    Family("sennet_dns_queries_total", "counter", "DNS queries seen, by query type."),
    Family("sennet_dns_responses_total", "counter", "DNS responses seen, by rcode."),
    Family(
        "sennet_dns_latency_seconds",
        "histogram",
        "DNS query to response, matched by client address, port and transaction id.",
    ),
    Family(
        "sennet_dns_unanswered_total", "counter", "DNS queries not answered within the timeout."
    ),
    Family("sennet_dns_malformed_total", "counter", "DNS messages the agent's parser refused."),
    Family("sennet_dns_top_queried", "gauge", "Most queried names (rank 1 = most)."),
    Family(
        "sennet_dns_top_failing",
        "gauge",
        "Names with the most responses other than NOERROR (rank 1 = most).",
    ),
    Family(
        "sennet_tcp_syn_rtt_seconds",
        "histogram",
        "SYN to SYN/ACK: the path from the tap point to the server and back.",
    ),
    Family(
        "sennet_tcp_synack_rtt_seconds",
        "histogram",
        "SYN/ACK to ACK: the path from the tap point to the client and back.",
    ),
    Family(
        "sennet_tcp_attempts_unanswered_total",
        "counter",
        "TCP SYNs not answered by a SYN/ACK within the timeout.",
    ),
    Family("sennet_tcp_resets_total", "counter", "TCP RST segments, by the hook that saw them."),
    Family(
        "sennet_tcp_retransmits_total",
        "counter",
        "TCP data segments whose sequence number did not advance.",
    ),
    Family("sennet_tcp_zero_windows_total", "counter", "TCP zero-window advertisements."),
    Family("sennet_tcp_malformed_total", "counter", "TCP headers the agent's parser refused."),
)
INDEX = {f.name: i for i, f in enumerate(FAMILIES)}
# counter series family -> (exposed family, label name for the series' name or "")
COUNTERS = {
    "flow_created": ("sennet_flow_created_total", ""),
    "flow_ended": ("sennet_flow_ended_total", ""),
    "flow_lost": ("sennet_flow_lost_total", ""),
    "flow_evicted": ("sennet_flow_evicted_total", ""),
    "dns_queries": ("sennet_dns_queries_total", "type"),
    "dns_responses": ("sennet_dns_responses_total", "rcode"),
    "dns_unanswered": ("sennet_dns_unanswered_total", ""),
    "dns_malformed": ("sennet_dns_malformed_total", ""),
    "tcp_attempts_unanswered": ("sennet_tcp_attempts_unanswered_total", ""),
    "tcp_resets": ("sennet_tcp_resets_total", "direction"),
    "tcp_retransmits": ("sennet_tcp_retransmits_total", ""),
    "tcp_zero_windows": ("sennet_tcp_zero_windows_total", ""),
    "tcp_malformed": ("sennet_tcp_malformed_total", ""),
}
HISTOGRAMS = {
    "dns_latency": "sennet_dns_latency_seconds",
    "tcp_syn_rtt": "sennet_tcp_syn_rtt_seconds",
    "tcp_synack_rtt": "sennet_tcp_synack_rtt_seconds",
}
TALKER_LABELS = ("rank", "interface", "direction", "proto", "src", "dst", "sport", "dport", "vlan")


def exported_bucket(position: int, le: str, step: int) -> bool:
    """Whether the bucket at `position` (in `le` order) is exported with `step`.

    Every `step`-th bound and `+Inf`: the cumulative count at a bound does not
    depend on the buckets left out, so what is exported stays exact, only coarser.
    """
    return le == "+Inf" or (position + 1) % step == 0


def _histogram(buckets: Mapping[str, int], sum_ns: int, step: int) -> list[Sample]:
    """Cumulative buckets in `le` order, then `_count` and `_sum` (seconds)."""
    out: list[Sample] = []
    running = 0
    for position, le in enumerate(sorted(buckets, key=float)):  # float("+Inf") sorts last
        running += buckets[le]
        if exported_bucket(position, le, step):
            out.append(Sample("_bucket", (("le", le),), running))
    out.append(Sample("_count", (), running))
    out.append(Sample("_sum", (), sum_ns / 1e9))
    return out


def agent_samples(view: AgentView, step: int = 1) -> tuple[tuple[Sample, ...], ...]:
    """One agent's samples, one tuple per `FAMILIES` entry (empty when it has none).

    `step` thins histogram buckets (`exported_bucket`); 1 exports every bound.
    """
    per: list[list[Sample]] = [[] for _ in FAMILIES]
    buckets: dict[str, dict[str, int]] = {}
    sums: dict[str, int] = {}
    for (family, name), series in sorted(view.series.items()):
        if family in COUNTERS:
            exposed, label = COUNTERS[family]
            labels: Labels = ((label, name),) if label else ()
            per[INDEX[exposed]].append(Sample("", labels, series.total))
        elif family in HISTOGRAMS:
            buckets.setdefault(family, {})[name] = series.total
        elif family.endswith(fi.SUM) and family[: -len(fi.SUM)] in HISTOGRAMS:
            sums[family[: -len(fi.SUM)]] = series.total
    for family, exposed in HISTOGRAMS.items():
        if family in buckets:
            per[INDEX[exposed]] = _histogram(buckets[family], sums.get(family, 0), step)
    for index, samples in gauge_samples(view.telemetry).items():
        per[index].extend(samples)
    return tuple(tuple(samples) for samples in per)


def gauge_samples(t: fi.Telemetry | None) -> dict[int, list[Sample]]:
    """The samples of the latest heartbeat's gauges, by `FAMILIES` index."""
    per: dict[int, list[Sample]] = defaultdict(list)
    if t is None:
        return per
    if t.flows_active is not None:
        per[INDEX["sennet_flow_active"]].append(Sample("", (), t.flows_active))
    if t.flows_capacity is not None:
        per[INDEX["sennet_flow_capacity"]].append(Sample("", (), t.flows_capacity))
    for rank, r in enumerate(t.talkers, start=1):
        values = (
            *(rank, r.interface, r.direction, r.l4_proto, r.src_addr, r.dst_addr),
            *(r.src_port, r.dst_port, r.vlan_id),
        )
        labels = tuple(zip(TALKER_LABELS, map(str, values), strict=True))
        per[INDEX["sennet_flow_top_talker_bytes"]].append(Sample("", labels, r.bytes))
        per[INDEX["sennet_flow_top_talker_packets"]].append(Sample("", labels, r.packets))
    for b in t.bursts:
        labels = (
            ("interface", b.interface),
            ("direction", b.direction),
            ("window", f"{b.window_ms}ms"),
        )
        per[INDEX["sennet_flow_microburst_max_packets"]].append(Sample("", labels, b.max_packets))
        per[INDEX["sennet_flow_microburst_max_bytes"]].append(Sample("", labels, b.max_bytes))
    for exposed, names in (
        ("sennet_dns_top_queried", t.top_queried),
        ("sennet_dns_top_failing", t.top_failing),
    ):
        for rank, n in enumerate(names, start=1):
            labels = (("rank", str(rank)), ("qname", n.name))
            per[INDEX[exposed]].append(Sample("", labels, n.hits))
    return per


def _metric(family: Family) -> Metric:
    name = family.name.removesuffix("_total") if family.type == "counter" else family.name
    return Metric(name, family.help, family.type)


class InsightCollector(Collector):
    """Reference path: the same samples through prometheus-client's own exposition."""

    def __init__(self, fleet: Fleet, histogram_step: int = 1) -> None:
        self._fleet = fleet
        self._step = histogram_step

    def collect(self) -> Iterator[Metric]:
        metrics = [_metric(f) for f in FAMILIES]
        for view in self._fleet.snapshot():
            for family, metric, samples in zip(
                FAMILIES, metrics, agent_samples(view, self._step), strict=True
            ):
                for s in samples:
                    labels = {"agent": view.agent_id, **dict(s.labels)}
                    metric.add_sample(family.name + s.suffix, labels, s.value)
        yield from metrics

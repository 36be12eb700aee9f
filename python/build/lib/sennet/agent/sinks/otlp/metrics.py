"""A snapshot as an OTLP ExportMetricsServiceRequest.

Every counter is a cumulative monotonic Sum, so a lost export loses nothing:
the next one carries the totals. A backend tells one series from the next by
its start time, so `StartTimes` keeps it fixed while a counter only grows and
gives a new one when it went backwards (the pinned maps were recreated, or
the agent process restarted for figures that live in the process).
Per-interval figures (microburst maxima, top talkers, active flows) are
Gauges. Attribute names follow the OpenTelemetry semantic conventions where
one exists (network.interface.name, network.io.direction, source.address ...)
and are `sennet.*` otherwise; see docs/otlp.md for the full list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
from opentelemetry.proto.common.v1 import common_pb2 as common
from opentelemetry.proto.metrics.v1 import metrics_pb2 as mp
from opentelemetry.proto.resource.v1 import resource_pb2

from sennet.agent.sinks.protocol import Attrs, OwnMetric
from sennet.agent.snapshot import Snapshot
from sennet.agent.telemetry import DnsReport, FlowReport, LatencyHistogram, Microburst, TcpReport

CUMULATIVE = mp.AGGREGATION_TEMPORALITY_CUMULATIVE
DIRECTION = {"rx": "receive", "tx": "transmit"}  # network.io.direction
TRANSPORT = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}  # network.transport
SCOPE = "sennet.agent"

Value = int | float
SeriesKey = tuple[str, Attrs]


def attributes(attrs: Iterable[tuple[str, object]]) -> list[common.KeyValue]:
    """KeyValues with the value's own type (int, float, bool or string)."""
    out = []
    for key, value in attrs:
        if isinstance(value, bool):
            any_value = common.AnyValue(bool_value=value)
        elif isinstance(value, int):
            any_value = common.AnyValue(int_value=value)
        elif isinstance(value, float):
            any_value = common.AnyValue(double_value=value)
        else:
            any_value = common.AnyValue(string_value=str(value))
        out.append(common.KeyValue(key=key, value=any_value))
    return out


class StartTimes:
    """Start times of cumulative series: fixed while a series grows, new when it goes back.

    `pinned_start_ns` is when the kernel's counters began (the pinned maps'
    creation); `process_start_ns` when this agent process began (its own
    counters: events decoded, exports). A series seen going backwards starts
    again at the time of its previous point, the last instant known to be
    before the reset.
    """

    def __init__(self, pinned_start_ns: int, process_start_ns: int) -> None:
        self.pinned_start_ns = pinned_start_ns
        self.process_start_ns = process_start_ns
        self._seen: dict[SeriesKey, tuple[int, float, int]] = {}  # start, value, time
        self.resets = 0

    def start(self, key: SeriesKey, value: float, now_ns: int, process: bool = False) -> int:
        previous = self._seen.get(key)
        if previous is None:
            start = self.process_start_ns if process else self.pinned_start_ns
        elif value < previous[1]:
            start = previous[2]
            self.resets += 1
        else:
            start = previous[0]
        self._seen[key] = (start, value, now_ns)
        return start


class MetricsBuilder:
    """Builds one request per interval; owns the start times, so keep one per sink."""

    def __init__(self, resource: resource_pb2.Resource, starts: StartTimes, version: str) -> None:
        self.resource = resource
        self.starts = starts
        self.version = version

    def request(
        self, snap: Snapshot, now_ns: int, own: Sequence[OwnMetric] = (), agent_dropped: int = 0
    ) -> ms.ExportMetricsServiceRequest:
        b = _Batch(self.starts, now_ns)
        iface = [(c.ifname, c) for c in snap.interfaces]
        for what, unit in (("packets", "{packet}"), ("bytes", "By")):
            b.sum(
                f"sennet.interface.{what}",
                f"{what.capitalize()} seen by the TC programs, by interface and direction",
                unit,
                [
                    (_if(name, d), getattr(c, f"{d}_{what}"))
                    for name, c in iface
                    for d in ("rx", "tx")
                ],
            )
        kinds = sorted(snap.events_by_kind.items())
        b.sum(
            "sennet.events",
            "Events detected by the data plane, by kind",
            "{event}",
            [((("sennet.event.kind", k),), n) for k, n in kinds],
        )
        drops = sorted(snap.ringbuf_drops_by_kind.items())
        b.sum(
            "sennet.ringbuf.drops",
            "Events lost because the ring buffer was full",
            "{event}",
            [((("sennet.event.kind", k),), n) for k, n in drops],
        )
        b.sum(
            "sennet.events.consumed",
            "Events decoded by this agent process",
            "{event}",
            [((), snap.events_consumed)],
            process=True,
        )
        b.sum(
            "sennet.agent.events.dropped",
            "Events decoded but not exported: more than recent_events_max in one interval",
            "{event}",
            [((), agent_dropped)],
            process=True,
        )
        b.gauge(
            "sennet.agent.uptime",
            "Seconds since the agent process started",
            "s",
            [((), snap.uptime_s)],
        )
        if snap.flows is not None:
            _flows(b, snap.flows)
        _microbursts(b, snap.microbursts)
        if snap.dns is not None:
            _dns(b, snap.dns)
        if snap.tcp is not None:
            _tcp(b, snap.tcp)
        for metric in own:
            if metric.kind == "counter":
                b.sum(metric.name, metric.help, metric.unit, list(metric.points), process=True)
            else:
                b.gauge(metric.name, metric.help, metric.unit, list(metric.points))
        scope = mp.ScopeMetrics(
            scope=common.InstrumentationScope(name=SCOPE, version=self.version), metrics=b.metrics
        )
        return ms.ExportMetricsServiceRequest(
            resource_metrics=[mp.ResourceMetrics(resource=self.resource, scope_metrics=[scope])]
        )


def data_points(request: ms.ExportMetricsServiceRequest) -> int:
    """Points in a request: what a collector's rejected_data_points is measured against."""
    n = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                n += len(getattr(m, kind).data_points) if kind else 0
    return n


def _if(name: str, direction: str) -> Attrs:
    return (("network.interface.name", name), ("network.io.direction", DIRECTION[direction]))


class _Batch:
    def __init__(self, starts: StartTimes, now_ns: int) -> None:
        self.starts = starts
        self.now = now_ns
        self.metrics: list[mp.Metric] = []

    def sum(
        self,
        name: str,
        help: str,
        unit: str,
        points: Sequence[tuple[Attrs, Value]],
        process: bool = False,
    ) -> None:
        if not points:
            return
        out = mp.Sum(aggregation_temporality=CUMULATIVE, is_monotonic=True)
        for attrs, value in points:
            start = self.starts.start((name, attrs), value, self.now, process)
            point = out.data_points.add(
                start_time_unix_nano=start, time_unix_nano=self.now, attributes=attributes(attrs)
            )
            _set_number(point, value)
        self.metrics.append(mp.Metric(name=name, description=help, unit=unit, sum=out))

    def gauge(self, name: str, help: str, unit: str, points: Sequence[tuple[Attrs, Value]]) -> None:
        if not points:
            return
        out = mp.Gauge()
        for attrs, value in points:
            point = out.data_points.add(time_unix_nano=self.now, attributes=attributes(attrs))
            _set_number(point, value)
        self.metrics.append(mp.Metric(name=name, description=help, unit=unit, gauge=out))

    def histogram(
        self, name: str, help: str, points: Sequence[tuple[Attrs, LatencyHistogram]]
    ) -> None:
        out = mp.Histogram(aggregation_temporality=CUMULATIVE)
        for attrs, h in points:
            start = self.starts.start((name, attrs), h.count, self.now)
            out.data_points.add(
                start_time_unix_nano=start,
                time_unix_nano=self.now,
                attributes=attributes(attrs),
                count=h.count,
                sum=h.sum_s,
                bucket_counts=list(h.counts),
                explicit_bounds=list(h.bounds_s),
            )
        self.metrics.append(mp.Metric(name=name, description=help, unit="s", histogram=out))


def _set_number(point: mp.NumberDataPoint, value: Value) -> None:
    if isinstance(value, int):
        point.as_int = value
    else:
        point.as_double = value


def _flows(b: _Batch, f: FlowReport) -> None:
    b.gauge("sennet.flows.active", "Flows in the table at the read", "{flow}", [((), f.active)])
    b.gauge("sennet.flows.capacity", "Size of the flow table", "{flow}", [((), f.capacity)])
    for what, value, help in (
        ("created", f.created_total, "Flows the data plane created"),
        ("ended", f.ended_total, "Flows removed after FIN/RST or the idle timeout"),
        ("lost", f.lost_total, "Flows evicted by the table before the agent read them"),
        ("evicted", f.evicted_total, "Flows the agent had read, evicted before they ended"),
    ):
        b.sum(f"sennet.flows.{what}", help, "{flow}", [((), value)])
    talkers = []
    for rank, t in enumerate(f.top_talkers, 1):
        attrs: Attrs = (
            *_if(t.ifname, t.direction),
            ("network.type", f"ipv{t.ip_version}"),
            ("network.transport", TRANSPORT.get(t.l4_proto, str(t.l4_proto))),
            ("source.address", t.saddr),
            ("source.port", str(t.sport)),
            ("destination.address", t.daddr),
            ("destination.port", str(t.dport)),
            ("sennet.vlan.id", str(t.vlan_id)),
            ("sennet.rank", str(rank)),
        )
        talkers.append((attrs, t))
    b.gauge(
        "sennet.flow.top.bytes",
        "Bytes of the interval's top talkers (bounded set)",
        "By",
        [(a, t.bytes) for a, t in talkers],
    )
    b.gauge(
        "sennet.flow.top.packets",
        "Packets of the interval's top talkers",
        "{packet}",
        [(a, t.packets) for a, t in talkers],
    )


def _microbursts(b: _Batch, bursts: Sequence[Microburst]) -> None:
    def attrs(m: Microburst) -> Attrs:
        return (*_if(m.ifname, m.direction), ("sennet.window", f"{m.window_ms}ms"))

    b.gauge(
        "sennet.microburst.max_packets",
        "Busiest window of the interval: packets",
        "{packet}",
        [(attrs(m), m.max_packets) for m in bursts],
    )
    b.gauge(
        "sennet.microburst.max_bytes",
        "Busiest window of the interval: bytes",
        "By",
        [(attrs(m), m.max_bytes) for m in bursts],
    )


def _dns(b: _Batch, d: DnsReport) -> None:
    b.sum(
        "sennet.dns.queries",
        "DNS queries by question type",
        "{query}",
        [((("dns.question.type", k),), n) for k, n in sorted(d.queries_by_type.items())],
    )
    b.sum(
        "sennet.dns.responses",
        "DNS responses by response code",
        "{response}",
        [((("dns.response_code", k),), n) for k, n in sorted(d.responses_by_rcode.items())],
    )
    b.histogram("sennet.dns.latency", "Query to response, as seen at the tap", [((), d.latency)])
    b.sum(
        "sennet.dns.unanswered",
        "Queries without a response within the timeout",
        "{query}",
        [((), d.unanswered_total)],
    )
    b.sum(
        "sennet.dns.malformed",
        "DNS messages the parser refused",
        "{message}",
        [((), d.malformed_total)],
    )
    b.gauge(
        "sennet.dns.top.queried",
        "Most queried names (bounded set)",
        "{query}",
        [((("dns.question.name", n.name),), n.count) for n in d.top_queried],
    )
    b.gauge(
        "sennet.dns.top.failing",
        "Names with most failed responses (bounded set)",
        "{response}",
        [((("dns.question.name", n.name),), n.count) for n in d.top_failing],
    )


def _tcp(b: _Batch, t: TcpReport) -> None:
    b.histogram("sennet.tcp.syn_rtt", "SYN to SYN/ACK: tap to server and back", [((), t.syn_rtt)])
    b.histogram(
        "sennet.tcp.synack_rtt", "SYN/ACK to ACK: tap to client and back", [((), t.synack_rtt)]
    )
    b.sum(
        "sennet.tcp.attempts_unanswered",
        "SYNs never answered within the timeout",
        "{attempt}",
        [((), t.attempts_unanswered_total)],
    )
    b.sum(
        "sennet.tcp.resets",
        "TCP resets by direction",
        "{segment}",
        [
            ((("network.io.direction", DIRECTION.get(k, k)),), n)
            for k, n in sorted(t.resets_by_direction.items())
        ],
    )
    for what, value, help in (
        ("retransmits", t.retransmits_total, "Segments whose sequence did not advance"),
        ("zero_windows", t.zero_windows_total, "Segments advertising a zero window"),
        ("malformed", t.malformed_total, "TCP headers the parser refused"),
    ):
        b.sum(f"sennet.tcp.{what}", help, "{segment}", [((), value)])

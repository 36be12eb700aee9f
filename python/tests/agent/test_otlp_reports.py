"""Flows, microbursts, DNS and TCP health as OTLP series at a real receiver: counters as
cumulative Sums, latency as explicit-bucket Histograms, per-interval figures as Gauges,
and nothing at all for a report the data plane did not produce (None)."""

from __future__ import annotations

from dataclasses import replace

from opentelemetry.proto.metrics.v1 import metrics_pb2 as mp

from sennet.agent.datapath import layout
from sennet.agent.telemetry import (
    DnsReport,
    FlowReport,
    LatencyHistogram,
    Microburst,
    NameCount,
    Talker,
    TcpReport,
)
from sennet.testing.otlp_receiver import METRICS, OtlpReceiver
from tests.agent.otlp_helpers import options, sink_for, snap

BOUNDS = layout.hist_upper_bounds_s()


def hist(*pairs: tuple[int, int], sum_s: float = 0.5) -> LatencyHistogram:
    counts = [0] * (len(BOUNDS) + 1)
    for bucket, n in pairs:
        counts[bucket] = n
    return LatencyHistogram(BOUNDS, tuple(counts), sum_s)


def metric(rx: OtlpReceiver, name: str) -> mp.Metric | None:
    request = rx.accepted(METRICS)[-1].request
    for rm in request.resource_metrics:  # type: ignore[union-attr]
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    return m
    return None


def test_reports_become_sums_histograms_and_gauges_and_absent_reports_add_nothing() -> None:
    talker = Talker("mon0", "rx", 4, 6, "10.0.0.1", "10.0.0.2", 40000, 443, 0, 12, 9000, 0x18)
    flows = FlowReport(active=3, created_total=10, ended_total=7, lost_total=1,
                       top_talkers=(talker,), capacity=4096, evicted_total=2)  # fmt: skip
    dns = DnsReport(
        queries_by_type={"A": 5, "AAAA": 2},
        responses_by_rcode={"NOERROR": 6, "NXDOMAIN": 1},
        latency=hist((10, 4), (12, 3), sum_s=0.0123),
        unanswered_total=0,
        malformed_total=1,
        top_queried=(NameCount("example.org", 4),),
    )
    tcp = TcpReport(syn_rtt=hist((8, 2)), synack_rtt=hist((3, 2), sum_s=0.00001),
                    attempts_unanswered_total=1, resets_by_direction={"rx": 2, "tx": 0},
                    retransmits_total=5)  # fmt: skip
    bursts = (Microburst("mon0", "tx", 1, 40, 60000), Microburst("mon0", "tx", 10, 90, 130000))
    with OtlpReceiver() as rx:
        sink = sink_for(options(rx.grpc_endpoint))
        try:
            sink.send(snap(1))
            assert sink.flush(10)
            for name in ("sennet.flows.created", "sennet.dns.latency", "sennet.tcp.syn_rtt",
                         "sennet.microburst.max_bytes"):  # fmt: skip
                assert metric(rx, name) is None
            full = replace(snap(2), flows=flows, dns=dns, tcp=tcp, microbursts=bursts)
            sink.send(full)
            assert sink.flush(10)
        finally:
            sink.close()
        created = metric(rx, "sennet.flows.created")
        assert created is not None and created.sum.is_monotonic
        assert created.sum.aggregation_temporality == mp.AGGREGATION_TEMPORALITY_CUMULATIVE
        assert created.sum.data_points[0].as_int == 10
        assert rx.value("sennet.flows.active") == 3
        assert rx.value("sennet.flows.lost") == 1
        assert rx.value("sennet.flows.evicted") == 2
        top = {
            "network.interface.name": "mon0", "network.io.direction": "receive",
            "network.type": "ipv4", "network.transport": "tcp",
            "source.address": "10.0.0.1", "source.port": "40000",
            "destination.address": "10.0.0.2", "destination.port": "443",
            "sennet.vlan.id": "0", "sennet.rank": "1",
        }  # fmt: skip
        assert rx.value("sennet.flow.top.bytes", **top) == 9000
        assert rx.value("sennet.dns.queries", **{"dns.question.type": "AAAA"}) == 2
        assert rx.value("sennet.dns.responses", **{"dns.response_code": "NXDOMAIN"}) == 1
        assert rx.value("sennet.dns.top.queried", **{"dns.question.name": "example.org"}) == 4
        latency = metric(rx, "sennet.dns.latency")
        assert latency is not None and latency.unit == "s"
        (point,) = latency.histogram.data_points
        assert list(point.explicit_bounds) == list(BOUNDS)
        assert list(point.bucket_counts) == list(dns.latency.counts)
        assert (point.count, point.sum) == (7, 0.0123)
        assert rx.value("sennet.tcp.resets", **{"network.io.direction": "receive"}) == 2
        assert rx.value("sennet.tcp.retransmits") == 5
        syn = metric(rx, "sennet.tcp.synack_rtt")
        assert syn is not None and syn.histogram.data_points[0].count == 2
        window = {"network.interface.name": "mon0", "network.io.direction": "transmit"}
        assert (
            rx.value("sennet.microburst.max_packets", **window, **{"sennet.window": "10ms"}) == 90
        )
        assert (
            rx.value("sennet.microburst.max_bytes", **window, **{"sennet.window": "1ms"}) == 60000
        )

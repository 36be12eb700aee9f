"""The agent renders /metrics without prometheus_client, byte for byte as prometheus_client did.

prometheus_client is the reference here (a test tool): the same families built with
its `*MetricFamily` classes and written by its `generate_latest` must give exactly
the agent's bytes, and the whole read-out of a snapshot carrying every report
(escapes, IPv6, histograms, a sink's own metrics, the control plane's status)
must equal prometheus_client's rendering of the same samples. The endpoint is the
real HTTP server on a loopback port.
"""

from __future__ import annotations

import gzip
import http.client
import math
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from sennet.agent import readout
from sennet.agent.exposition import (
    CounterFamily,
    Family,
    GaugeFamily,
    HistogramFamily,
    InfoFamily,
    render,
)
from sennet.agent.sinks.protocol import OwnMetric
from sennet.common.prom_histogram import cumulative, go_float
from sennet.testing.telemetry import LOG2_BOUNDS_S, full_snapshot

PROM_TYPE = {CounterFamily: "counter", GaugeFamily: "gauge", InfoFamily: "info"}


class _Reference:
    """prometheus_client's registry over given metrics (its collector protocol)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


def reference_text(metrics: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Reference(metrics))
    return generate_latest(registry)


def as_reference(family: Family) -> Metric:
    """Our family's samples as a prometheus_client Metric of the same type."""
    kind = "histogram" if isinstance(family, HistogramFamily) else PROM_TYPE[type(family)]
    metric = Metric(family.name, family.documentation, kind)
    for name, labels, value in family.samples:
        metric.add_sample(name, dict(labels), value)
    return metric


@dataclass
class _Sink:
    def own_metrics(self) -> list[OwnMetric]:
        return [
            OwnMetric("sennet.agent.otlp.exported", "Exports that succeeded", "counter", "1",
                      ((( ("signal", "logs"), ), 12.0), ((("signal", "metrics"),), 3.0))),
            OwnMetric("sennet.agent.otlp.queued_bytes", "Bytes waiting", "gauge", "By",
                      (((), 2048.0),)),
        ]  # fmt: skip


def test_go_float_is_prometheus_clients_float_format() -> None:
    values = [0, 1, -1, 0.5, 1e-06, 2.5e-05, 123456.0, 999999.0, 1e6, 1234567.0, 3.2e7,
              1e21, 1e22, -1e7, 0.1 + 0.2, 2**53, 1 / 3, math.inf, -math.inf, math.nan,
              *LOG2_BOUNDS_S]  # fmt: skip
    assert [go_float(v) for v in values] == [floatToGoString(v) for v in values]  # type: ignore[no-untyped-call]


def test_each_family_kind_renders_as_prometheus_client_renders_it() -> None:
    ours: list[Family] = []
    theirs: list[Metric] = []
    ours.append(CounterFamily("c_total", "a counter\\with\nescapes", value=7))
    theirs.append(CounterMetricFamily("c_total", "a counter\\with\nescapes", value=7))
    c, rc = (
        CounterFamily("c2", "d", labels=["b", "a"]),
        CounterMetricFamily("c2", "d", labels=["b", "a"]),
    )
    for labels, value in ((["x", 'q"u\\o\nte'], 1.5), (["", "ü"], 2**40)):
        c.add_metric(labels, value)
        rc.add_metric(labels, value)
    ours.append(c)
    theirs.append(rc)
    ours.append(GaugeFamily("g", "a gauge", value=-0.25))
    theirs.append(GaugeMetricFamily("g", "a gauge", value=-0.25))
    ours.append(GaugeFamily("empty", "no samples", labels=["a"]))
    theirs.append(GaugeMetricFamily("empty", "no samples", labels=["a"]))
    i, ri = InfoFamily("i", "info", labels=["z"]), InfoMetricFamily("i", "info", labels=["z"])
    i.add_metric(["1"], {"version": "0.1", "a": "b"})
    ri.add_metric(["1"], {"version": "0.1", "a": "b"})
    ours.append(i)
    theirs.append(ri)
    ours.append(InfoFamily("i2", "info", value={"address": "[::1]:443"}))
    theirs.append(InfoMetricFamily("i2", "info", value={"address": "[::1]:443"}))
    counts = [0, 3, 0, 5, *[0] * 23, 1]
    h, rh = HistogramFamily("h_seconds", "latency"), HistogramMetricFamily("h_seconds", "latency")
    h.add_metric([], cumulative(LOG2_BOUNDS_S, counts), 0.123456789)
    rh.add_metric([], cumulative(LOG2_BOUNDS_S, counts), 0.123456789)
    ours.append(h)
    theirs.append(rh)
    assert render(ours) == reference_text(theirs)


def test_the_whole_read_out_renders_as_prometheus_client_renders_it() -> None:
    collector = readout.SnapshotCollector(
        full_snapshot, "agent-1", sink=_Sink, control_plane=lambda: ("[fd00::1]:8443", 2, 1)
    )
    families = list(collector.collect())
    text = render(families)
    assert text == reference_text([as_reference(f) for f in families])
    for line in (
        b'sennet_agent_otlp_exported_total{signal="logs"} 12.0\n',
        b"sennet_agent_otlp_queued_bytes 2048.0\n",
        b'sennet_agent_control_plane_info{address="[fd00::1]:8443"} 1.0\n',
        b"sennet_agent_control_plane_failovers_total 2.0\n",
        b'sennet_agent_dns_top_queried{qname="we\\"ird\\\\name.test",rank="2"} 9.0\n',
        b'sennet_agent_dns_latency_seconds_bucket{le="+Inf"} 6.0\n',
    ):
        assert line in text, line


@pytest.fixture
def endpoint() -> Iterator[tuple[str, int]]:
    server, thread = readout.serve("127.0.0.1:0", full_snapshot, "agent-1")
    try:
        yield "127.0.0.1", server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _request(
    at: tuple[str, int], method: str, path: str = "/metrics", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*at, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_the_endpoint_serves_the_text_plain_or_gzipped(endpoint: tuple[str, int]) -> None:
    status, headers, plain = _request(endpoint, "GET")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "Content-Encoding" not in headers
    assert int(headers["Content-Length"]) == len(plain)
    assert plain.startswith(b"# HELP sennet_agent_info Agent identity and build\n")
    status, headers, packed = _request(endpoint, "GET", "/", {"Accept-Encoding": "br, GZIP;q=0.8"})
    assert (status, headers["Content-Encoding"]) == (200, "gzip")
    unpacked = gzip.decompress(packed)
    # Only the uptime differs between two scrapes.
    assert [x for x in unpacked.splitlines() if b"uptime" not in x] == [
        x for x in plain.splitlines() if b"uptime" not in x
    ]


def test_the_endpoint_answers_other_requests_as_prometheus_client_did(
    endpoint: tuple[str, int],
) -> None:
    assert _request(endpoint, "GET", "/favicon.ico")[::2] == (200, b"")
    status, headers, body = _request(endpoint, "OPTIONS")
    assert (status, headers["Allow"], body) == (200, "OPTIONS,GET", b"")
    status, headers, body = _request(endpoint, "POST")
    assert (status, headers["Allow"]) == (405, "OPTIONS,GET")
    assert body == b"# HTTP 405 Method Not Allowed: POST; use OPTIONS or GET\n"


def test_the_endpoint_listens_on_ipv6_when_told() -> None:
    server, thread = readout.serve("[::1]:0", full_snapshot, "agent-1")
    try:
        status, _, body = _request(("::1", server.server_port), "GET")
        assert status == 200 and b"sennet_agent_uptime_seconds " in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _raw(at: tuple[str, int], head: bytes) -> bytes:
    with socket.create_connection(at, timeout=10) as s:
        s.sendall(head)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    "head",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /metrics\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n",
        b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    ],
    ids=["no-version", "two-words", "bad-header", "101-headers", "long-header", "long-target"],
)
def test_the_endpoint_answers_a_malformed_head_with_400(
    endpoint: tuple[str, int], head: bytes
) -> None:
    reply = _raw(endpoint, head)
    assert reply.startswith(b"HTTP/1.0 400 Bad Request\r\n"), reply[:80]
    assert reply.endswith(b"\r\nContent-Length: 0\r\n\r\n")


def test_the_endpoint_answers_head_and_http_1_0_requests(endpoint: tuple[str, int]) -> None:
    reply = _raw(endpoint, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 405 Method Not Allowed\r\n")
    assert reply.endswith(b"\r\nContent-Length: 0\r\n\r\n")  # no body to a HEAD
    reply = _raw(endpoint, b"GET /metrics HTTP/1.0\n\n")  # bare newlines, as some tools send
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert f"Content-Length: {len(body)}".encode() in head.split(b"\r\n")
    assert b"\nsennet_agent_uptime_seconds " in body

"""A real Prometheus (Debian's) scrapes the control plane; every dashboard query is checked.

Two simulated agents report through real gRPC while Prometheus scrapes every
second; agent B restarts without pinned maps half way (its raw counters fall).
Then each PromQL expression in the shipped Grafana dashboard is evaluated by
Prometheus at one instant T and compared with the value computed here from the
raw samples Prometheus holds for the same series at the same T, using
Prometheus' documented `rate()`/`increase()` extrapolation. Every dashboard
expression must have a shape this test knows how to check; a new shape fails
the test until a check is added. Float results are compared to 1e-9 relative
(summation order may differ); everything else is exact.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from sennet.common.retry import retry
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.controlplane import Served, heartbeat_request
from sennet.testing.ports import free_port
from sennet.testing.process import LoggedProcess, owned
from sennet.testing.telemetry import full_request

REPO = Path(__file__).resolve().parents[3]
DASHBOARD = REPO / "deploy/grafana/dashboards/sennet.json"
PROM_CONFIG = REPO / "deploy/prometheus/prometheus.yml"
RULES = REPO / "deploy/prometheus/sennet-rules.yml"
WINDOW_S = 4  # stands in for Grafana's $__rate_interval (4 scrapes at 1 s)

Labels = tuple[tuple[str, str], ...]


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        qs = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def instant(self, expr: str, at: float) -> dict[Labels, float]:
        return {_labels(r["metric"]): float(r["value"][1]) for r in self.query(expr, at)}

    def raw(self, selector: str, at: float) -> dict[Labels, list[tuple[int, float]]]:
        """Raw samples (ms, value) of a range selector, as Prometheus stores them."""
        return {
            _labels(r["metric"]): [(round(float(t) * 1000), float(v)) for t, v in r["values"]]
            for r in self.query(f"{selector}[{WINDOW_S}s]", at)
        }


def _labels(metric: dict[str, str]) -> Labels:
    return tuple(sorted((k, v) for k, v in metric.items() if k != "__name__"))


def extrapolated(points: list[tuple[int, float]], at_ms: int, is_rate: bool) -> float | None:
    """Prometheus 2.x `extrapolatedRate` for a counter (promql/functions.go)."""
    if len(points) < 2:
        return None
    range_start, range_end = at_ms - WINDOW_S * 1000, at_ms
    result = points[-1][1] - points[0][1]
    last = 0.0
    for _, v in points:
        if v < last:
            result += last
        last = v
    to_start = (points[0][0] - range_start) / 1000
    to_end = (range_end - points[-1][0]) / 1000
    sampled = (points[-1][0] - points[0][0]) / 1000
    average = sampled / (len(points) - 1)
    if result > 0 and points[0][1] >= 0:
        to_zero = sampled * (points[0][1] / result)
        to_start = min(to_start, to_zero)
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    result = result * (interval / sampled)
    return result / WINDOW_S if is_rate else result


def bucket_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus 2.x `bucketQuantile` (promql/quantile.go) over {upper bound: rate}."""
    bounds = sorted(buckets)
    counts = [buckets[b] for b in bounds]
    for i in range(1, len(counts)):  # ensureMonotonic
        counts[i] = max(counts[i], counts[i - 1])
    if bounds[-1] != math.inf or len(bounds) < 2 or counts[-1] == 0:
        return math.nan
    rank = q * counts[-1]
    # sort.Search over all but the +Inf bucket: the first bucket holding `rank`, else +Inf's
    b = next((i for i in range(len(bounds) - 1) if counts[i] >= rank), len(bounds) - 1)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, count = 0.0, counts[b]
    if b > 0:
        start, count, rank = bounds[b - 1], count - counts[b - 1], rank - counts[b - 1]
    return start + (bounds[b] - start) * (rank / count)


_AGG = re.compile(r"^sum by \(([\w, ]+)\) \((rate|increase)\((\w+(?:\{[^}]*\})?)\[\d+s\]\)\)$")
_QUANTILE = re.compile(
    r"^histogram_quantile\(([\d.]+), sum by \(([\w, ]+)\) "
    r"\(rate\((\w+(?:\{[^}]*\})?)\[\d+s\]\)\)\)$"
)
_SUM = re.compile(r"^sum\((\w+\{[^}]*\})\)$")
_AGE = re.compile(r"^time\(\) - (\w+\{[^}]*\})$")
_SELECTOR = re.compile(r"^\w+\{[^}]*\}$")


def expected_value(prom: Prometheus, expr: str, at: float) -> dict[Labels, float]:
    """What `expr` must evaluate to at `at`, computed from raw samples."""
    at_ms = round(at * 1000)
    if m := _AGG.match(expr):
        by = [s.strip() for s in m.group(1).split(",")]
        out: dict[Labels, float] = defaultdict(float)
        for labels, points in prom.raw(m.group(3), at).items():
            value = extrapolated(points, at_ms, is_rate=m.group(2) == "rate")
            if value is not None:
                out[tuple(sorted((k, v) for k, v in labels if k in by))] += value
        return dict(out)
    if m := _QUANTILE.match(expr):
        q, by = float(m.group(1)), [s.strip() for s in m.group(2).split(",")]
        rates: dict[Labels, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for labels, points in prom.raw(m.group(3), at).items():
            value = extrapolated(points, at_ms, is_rate=True)
            if value is not None:
                le = float(dict(labels)["le"])
                group = tuple(sorted((k, v) for k, v in labels if k in by and k != "le"))
                rates[group][le] += value
        return {group: bucket_quantile(q, buckets) for group, buckets in rates.items()}
    if m := _SUM.match(expr):
        values = prom.instant(m.group(1), at)
        return {(): sum(values.values())} if values else {}
    if m := _AGE.match(expr):
        return {k: at_ms / 1000 - v for k, v in prom.instant(m.group(1), at).items()}
    if _SELECTOR.match(expr):
        return prom.instant(expr, at)
    raise AssertionError(f"the dashboard uses an expression this test cannot check: {expr}")


def with_insights(req: pb.HeartbeatRequest, t: int) -> pb.HeartbeatRequest:
    """Add flow, DNS and TCP parts whose totals grow with tick `t` (and fall with it at a reset).

    Histograms: DNS latency 4t responses in [256, 512) us and t in [2, 4) ms; server-side
    handshake RTT 2t in [4, 8) ms and t in [16, 32) ms; client side 3t in [64, 128) us.
    """
    parts = full_request(req.agent_id)  # the gauges: talkers, microbursts, top names
    f = parts.flows
    f.created_total, f.ended_total, f.lost_total, f.evicted_total = 50 * t, 45 * t, t // 2, 2 * t
    d = parts.dns
    d.queries_by_type.clear()
    d.queries_by_type.update({"A": 20 * t, "AAAA": 10 * t})
    d.responses_by_rcode.update(
        {"NOERROR": 25 * t, "NXDOMAIN": 3 * t, "SERVFAIL": t, "REFUSED": 0, "other": 0}
    )
    d.unanswered_total, d.malformed_total = t // 3, 0

    def hist(h: pb.LatencyHistogram, filled: dict[int, int], sum_s: float) -> None:
        del h.counts[:]
        h.counts.extend(filled.get(i, 0) for i in range(len(h.bounds_seconds) + 1))
        h.sum_seconds = sum_s

    hist(d.latency, {9: 4 * t, 12: t}, t * (4 * 0.0004 + 0.003))
    tcp = parts.tcp
    hist(tcp.syn_rtt, {13: 2 * t, 15: t}, t * (2 * 0.006 + 0.02))
    hist(tcp.synack_rtt, {7: 3 * t}, t * 3 * 0.0001)
    tcp.attempts_unanswered_total = t // 4
    tcp.resets_by_direction.update({"rx": t, "tx": t // 2})
    tcp.retransmits_total, tcp.zero_windows_total = 5 * t, t // 5
    req.flows.CopyFrom(parts.flows)
    req.microbursts.extend(parts.microbursts)
    req.dns.CopyFrom(d)
    req.tcp.CopyFrom(tcp)
    return req


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


TOP_TALKERS = "Top talkers (bytes in the last interval)"


def dashboard_exprs_of(title: str) -> list[str]:
    """The queries of the panel titled `title`, in order (p50 before p99)."""
    return [expr for t, expr in dashboard_exprs() if t == title]


def panel_query(title: str) -> str:
    """The one query of the panel titled `title` (panels move; titles are what people see)."""
    exprs = [expr for t, expr in dashboard_exprs() if t == title]
    assert len(exprs) == 1, f"expected one query in panel {title!r}, found {len(exprs)}"
    return exprs[0]


def grafana_to_promql(expr: str) -> str:
    """Substitute Grafana's variables the way it would with agent=All and 1 s scrapes."""
    return expr.replace('"$agent"', '".*"').replace("$__rate_interval", f"{WINDOW_S}s")


@pytest.fixture
def prometheus(fresh: Served, tmp_path: Path) -> Iterator[Prometheus]:
    config = yaml.safe_load(PROM_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(RULES)]
    config["scrape_configs"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{fresh.cp.http_port}"]}
    ]
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    port = free_port()
    server = LoggedProcess(
        "prometheus",
        [
            "prometheus",
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path / "prometheus.log",
    )
    with owned(server.start()):

        def ready(last: bool) -> bool | None:
            assert server.running, server.log()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
                    return True if r.status == 200 else None
            except OSError:
                return None

        retry(ready, 30.0, interval=0.2, what="prometheus ready")
        yield Prometheus(f"http://127.0.0.1:{port}")
        server.stop()


def test_the_shipped_prometheus_config_and_rules_pass_promtool() -> None:
    for argv in (
        ["promtool", "check", "config", str(PROM_CONFIG)],
        ["promtool", "check", "rules", str(RULES)],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_and_its_provisioning_fit_together() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dash["templating"]["list"]}
    assert names == {"datasource", "agent"}
    titles = {p["title"] for p in dash["panels"]}
    for must in (
        "RX packets/s",
        "TX packets/s",
        "RX bytes/s",
        "TX bytes/s",
        "Events/s by kind",
        "Agent liveness",
        "Ring-buffer drops/s by kind",
        "Top talkers (bytes in the last interval)",
        "Active flows",
        "New and ended flows/s",
        "Flows lost track of",
        "Microbursts: most bytes in one window",
        "DNS queries/s by type",
        "DNS responses/s by rcode",
        "DNS latency heatmap",
        "DNS latency quantiles",
        "DNS queries unanswered/s",
        "Top queried names",
        "Top failing names",
        "TCP handshake RTT, server side (SYN to SYN/ACK)",
        "TCP handshake RTT, client side (SYN/ACK to ACK)",
        "TCP retransmits/s",
        "TCP resets/s by direction",
        "TCP zero windows/s",
    ):
        assert must in titles
    provider = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/dashboards/sennet.yml").read_text()
    )
    assert provider["providers"][0]["type"] == "file"
    source = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/sennet.yml").read_text()
    )
    assert source["datasources"][0]["type"] == "prometheus"


def test_every_dashboard_query_evaluates_to_the_expected_values(
    fresh: Served, prometheus: Prometheus
) -> None:
    cp = fresh.cp
    a, token_a = cp.register(fresh.bootstrap, hostname="a")
    b, token_b = cp.register(fresh.bootstrap, hostname="b")
    stop = threading.Event()
    errors: list[str] = []

    def feed() -> None:
        tick = 0
        while not stop.is_set():
            tick += 1
            # B restarts without pinned maps at tick 12: its raw counters start again at 0
            tb = tick if tick < 12 else tick - 12
            for agent, token, t, dropped in ((a, token_a, tick, 0), (b, token_b, tb, tick // 3)):
                req = heartbeat_request(
                    agent,
                    rx=(10 * t, 1000 * t),
                    tx=(5 * t, 400 * t),
                    uptime=float(t),
                    events={"large_packet": t, "tcp_xmas": t // 2},
                    drops={"large_packet": t // 4},
                    agent_dropped=dropped,
                )
                code, details = cp.heartbeat(token, with_insights(req, t))
                if code != grpc.StatusCode.OK:
                    errors.append(f"{code}: {details}")
            cp.heartbeat("sb.0000000000000000." + "x" * 43, heartbeat_request(a))  # rejected
            stop.wait(0.25)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        time.sleep(7.5)
    finally:
        stop.set()
        feeder.join(5)
    assert errors == []
    at = round(time.time(), 3)
    checked = 0
    for title, expr in dashboard_exprs():
        promql = grafana_to_promql(expr)
        got = prometheus.instant(promql, at)
        want = expected_value(prometheus, promql, at)
        assert got.keys() == want.keys(), (title, promql)
        assert got, f"{title}: {promql} returned nothing"
        for key, value in want.items():
            if math.isnan(value):
                assert math.isnan(got[key]), (title, key)
            else:
                assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (title, key)
        checked += 1
    assert checked == len(dashboard_exprs()) == 39
    p99 = prometheus.instant(grafana_to_promql(panel_query("Control plane: p99 call latency")), at)
    assert 0 < p99[(("method", "Heartbeat"),)] <= 2.5  # a real latency, inside the buckets

    # The exported counters never went backwards, although agent B's raw counters did,
    # and its rates stay plausible (not a spike of its whole history, not negative).
    resets = prometheus.instant("resets(sennet_interface_packets_total[1m])", at)
    assert set(resets.values()) == {0.0} and len(resets) == 4
    assert prometheus.instant(f'sennet_agent_series_resets_total{{agent="{b}"}}', at) != {}
    rx_rates = prometheus.instant(grafana_to_promql(panel_query("RX packets/s")), at)
    for labels, rate in rx_rates.items():
        # 10 packets per tick, at most 4 ticks/s (slower when the box is busy): never the
        # agent's whole history at once, never negative
        assert 0 < rate <= 60, (labels, rate)
    assert prometheus.instant('sum(sennet_agent_up{agent=~".*"})', at) == {(): 2.0}

    # Flows, DNS and TCP: the same monotonic export across B's restart, and figures that
    # land where the fed histograms put them.
    for family in (
        "sennet_flow_created_total",
        "sennet_flow_evicted_total",
        "sennet_dns_latency_seconds_bucket",
    ):
        assert set(prometheus.instant(f"resets({family}[1m])", at).values()) == {0.0}
    talkers = prometheus.instant(grafana_to_promql(panel_query(TOP_TALKERS)), at)
    assert sorted(talkers.values()) == [294, 294, 1_206, 1_206, 150_000, 150_000]
    dns = prometheus.instant(grafana_to_promql(dashboard_exprs_of("DNS latency quantiles")[0]), at)
    assert {k: 0.000256 <= v <= 0.000512 for k, v in dns.items()} == {
        (("agent", a),): True,
        (("agent", b),): True,
    }  # the median is in the bucket holding 4 of every 5 responses
    syn = prometheus.instant(
        grafana_to_promql(dashboard_exprs_of("TCP handshake RTT, server side (SYN to SYN/ACK)")[0]),
        at,
    )
    assert all(0.004096 <= v <= 0.008192 for v in syn.values()) and len(syn) == 2
    rejected = prometheus.instant(
        'sum(sennet_controlplane_requests_rejected_total{reason="unknown_token"})', at
    )
    assert rejected[()] >= 20

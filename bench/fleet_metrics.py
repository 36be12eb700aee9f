"""`/metrics` at fleet size: the render time of the control plane's exposition for N agents.

Part of `bench/controlplane.py` (its `/metrics` figures); kept apart from the heartbeat
load because it needs no servers: a fleet of agent views is built in memory and rendered
warm (every agent reported since the last scrape, or none) and cold (nothing prepared).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from sennet.controlplane import old_path
from sennet.controlplane.fleet import AgentView, Fleet, Series, SeriesKey
from sennet.controlplane.fleet_insights import FAMILIES
from sennet.controlplane.metrics import Exposition, ServerMetrics
from sennet.testing.figures import Figure
from sennet.testing.telemetry import full_request

MOVING = ("rx_", "tx_", "flow_", "dns_", "tcp_")
KINDS = ("large_packet", "tcp_null", "tcp_syn_fin", "tcp_syn_rst", "tcp_xmas", "land")


def fleet_of(agents: int, insights: bool = True) -> Fleet:
    """`agents` views; with `insights`, each also has a full heartbeat's flow, DNS and TCP
    series (three 28-bucket histograms) and gauges (3 talkers, 4 microbursts, 4 names)."""
    template = AgentView("template").apply(full_request("template"), time.time())[0]
    extra = {k: s for k, s in template.series.items() if k.family in FAMILIES}
    views = []
    for n in range(agents):
        series = {}
        for i in range(2):
            for f in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"):
                series[SeriesKey(f, f"eth{i}")] = Series(n * 1000 + i, n * 1000 + i)
        for k in KINDS:
            series[SeriesKey("events", k)] = Series(n, n)
            series[SeriesKey("ringbuf_drops", k)] = Series(0, 0)
        series[SeriesKey("agent_dropped", "")] = Series(0, 0)
        if insights:
            series.update(extra)
        views.append(
            AgentView(
                agent_id=str(uuid.UUID(int=n + 1)),
                hostname=f"host-{n}",
                agent_version="0.1.0",
                kernel_version="6.18.0",
                last_heartbeat=time.time(),
                uptime_seconds=100.0,
                heartbeats=1,
                series=series,
                telemetry=template.telemetry if insights else None,
            )
        )
    return Fleet(views)


@dataclass
class Timing:
    """Best-of wall time and the scraping thread's own CPU time, in ms.

    The box is shared (load average well above its 2 cores while the others build): wall
    time includes waiting for a CPU, thread CPU time does not, so both are reported.
    """

    wall_ms: float
    cpu_ms: float


def _timed(fn: Callable[[], object], repeat: int) -> Timing:
    walls, cpus = [], []
    for _ in range(repeat):
        started, cpu = time.perf_counter(), time.thread_time()
        fn()
        cpus.append(time.thread_time() - cpu)
        walls.append(time.perf_counter() - started)
    return Timing(min(walls) * 1000, min(cpus) * 1000)  # best of `repeat`: noise only adds


@dataclass
class PathTimes:
    """One /metrics path's figures over the same fleet shape."""

    cold: Timing
    after_heartbeats: Timing
    unchanged: Timing
    prepare_us: float  # per agent, at publish (the writer thread's share)
    body: bytes


def _measure_path(
    agents: int, repeat: int, insights: bool, histogram_step: int, old: bool
) -> PathTimes:
    """Cold, after-heartbeats and unchanged render times of the path `old` selects."""
    if old:
        os.environ[old_path.ENV] = "1"
    try:
        fleet = fleet_of(agents, insights)
        expo = Exposition(
            ServerMetrics(agents=lambda: len(fleet)), fleet, 35.0, histogram_step=histogram_step
        )
    finally:
        os.environ.pop(old_path.ENV, None)
    cold = _timed(lambda: expo.render(fast=True), 1)
    unchanged = _timed(lambda: expo.render(fast=True), repeat)
    prepare: list[float] = []

    def publish_all() -> None:
        # Every agent reported since the last scrape: new views, which the exporter
        # prepares as they are published (the writer thread's share, timed apart).
        fresh = {}
        for v in fleet.snapshot():
            # interface, flow, DNS and TCP counters move every interval; events rarely do
            series = {
                k: Series(s.last_raw + 1, s.total + 1) if k.family.startswith(MOVING) else s
                for k, s in v.series.items()
            }
            fresh[v.agent_id] = replace(v, series=series, last_heartbeat=time.time())
        started = time.thread_time()
        fleet.publish(fresh)
        prepare.append(time.thread_time() - started)

    walls, cpus = [], []
    for _ in range(repeat):
        publish_all()
        t = _timed(lambda: expo.render(fast=True), 1)
        walls.append(t.wall_ms)
        cpus.append(t.cpu_ms)
    body = expo.render(fast=True)
    return PathTimes(
        cold, Timing(min(walls), min(cpus)), unchanged, min(prepare) / agents * 1e6, body
    )


def bench_metrics(
    agents: int, repeat: int, insights: bool = True, histogram_step: int = 1
) -> list[Figure]:
    old = _measure_path(agents, repeat, insights, histogram_step, old=True)
    new = _measure_path(agents, repeat, insights, histogram_step, old=False)
    # (tests/controlplane/test_fleet_text.py checks the two paths give the same bytes; here
    # the fleets differ in their timestamps, so only the size is compared)
    if abs(len(new.body) - len(old.body)) > len(old.body) // 100:
        raise SystemExit(f"/metrics: {len(new.body)} bytes, the old path {len(old.body)}")
    fleet = fleet_of(agents, insights)
    expo = Exposition(
        ServerMetrics(agents=lambda: len(fleet)), fleet, 35.0, histogram_step=histogram_step
    )
    plain = _timed(lambda: expo.render(fast=False), 1)
    plain_bytes = len(expo.render(fast=False))
    fast = new.body
    series = sum(1 for line in fast.splitlines() if line and not line.startswith(b"#"))
    fleet_series = sum(
        1
        for line in fast.splitlines()
        if line.startswith(b"sennet_") and not line.startswith(b"sennet_controlplane")
    )
    shape = (
        f"{agents} agents x 2 interfaces"
        f"{f' + flows, DNS, TCP (histogram step {histogram_step})' if insights else ''}, "
        f"{fleet_series} fleet series, {len(fast) / 1e6:.1f} MB"
    )
    figs: list[Figure] = []
    cases = (
        ("metrics_render_fast", "after_heartbeats", "every agent reported since the last scrape"),
        ("metrics_render_fast_unchanged", "unchanged", "no heartbeat since the last scrape"),
        ("metrics_render_fast_cold", "cold", "first scrape after start, nothing prepared"),
    )
    for name, attr, what in cases:
        for unit_name, pick in (("", "wall_ms"), ("_cpu", "cpu_ms")):
            before = Figure(
                f"{name}{unit_name}_old_path",
                round(getattr(getattr(old, attr), pick), 1),
                "ms",
                note=f"{what}; SENNET_CONTROLPLANE_OLD_PATH=1"
                + ("; scraping thread CPU time" if unit_name else ""),
            )
            after = Figure(
                f"{name}{unit_name}",
                round(getattr(getattr(new, attr), pick), 1),
                "ms",
                baseline=before,
                note=f"{what}; {shape}" if not unit_name else "scraping thread CPU time",
            )
            figs += [before, after]
    before = Figure(
        "metrics_prepare_per_heartbeat_old_path",
        round(old.prepare_us, 1),
        "us",
        note="write-time share per installed view (thread CPU time)",
    )
    figs += [
        before,
        Figure(
            "metrics_prepare_per_heartbeat",
            round(new.prepare_us, 1),
            "us",
            baseline=before,
            note="write-time share per installed view (thread CPU time)",
        ),
    ]
    reference = Figure(
        "metrics_render_prometheus_client",
        round(plain.wall_ms, 1),
        "ms",
        note="custom collector + generate_latest (once)",
    )
    figs += [
        reference,
        Figure(
            "metrics_speedup",
            round(plain.wall_ms / new.after_heartbeats.wall_ms, 2),
            "ratio",
            baseline=reference,
        ),
        Figure("metrics_series", float(series), "series"),
        Figure(
            "metrics_bytes",
            round(len(fast) / 1e6, 2),
            "MB",
            note=f"prometheus-client path: {plain_bytes / 1e6:.2f} MB, same samples",
        ),
    ]
    return figs

"""OTLP export: CPU per 10,000 events, CPU per metrics export, the queue's memory bound,
and what the OpenTelemetry SDK would cost against building the messages directly.

- `otlp.logs.cpu_per_10k_events.{grpc,http}`: 10,000 ring-buffer events in one snapshot
  through the agent's OtlpSink to a receiver in another process (so its CPU is not
  counted): the run loop's share (building and encoding, `send()`) plus the sender
  thread's (gzip, the RPC), from the thread CPU clocks. Median of rounds; every round
  must end with exactly 10,000 more log records accepted, or the run fails.
- `otlp.metrics.cpu_per_export.{grpc,http}`: one metrics export of a snapshot with two
  interfaces, every event kind, flows (10 top talkers), DNS and TCP histograms; and its
  encoded size.
- `otlp.queue.*`: the receiver down, 64 MiB of batches offered to a 4 MiB queue: the
  queue's peak bytes (must not pass the limit) and the Python heap growth (tracemalloc)
  while it is full: what the bound costs in memory, overheads included.
- `otlp.import.*`, `otlp.size.*`: a fresh virtualenv with the OpenTelemetry SDK and both
  OTLP exporters (pinned below) is created with pip; in that one environment the CPU time
  to import what each approach needs (fresh interpreters, median of runs, bare interpreter
  start subtracted) and the installed size of the distributions each needs beyond what
  the agent carries anyway (grpcio, protobuf).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from sennet.agent.datapath import layout
from sennet.agent.datapath.layout import Direction, EventKind
from sennet.agent.sinks.otlp.settings import OtlpOptions, parse_endpoint
from sennet.agent.sinks.otlp.sink import OtlpSink
from sennet.agent.sinks.otlp.transport import LOGS, METRICS
from sennet.agent.snapshot import Event, InterfaceCounters, Snapshot
from sennet.agent.telemetry import (
    DnsReport,
    FlowReport,
    LatencyHistogram,
    NameCount,
    Talker,
    TcpReport,
)
from sennet.testing.errors import HarnessError
from sennet.testing.figures import Figure, report

SDK_PINS = (
    "opentelemetry-sdk==1.45.2",
    "opentelemetry-exporter-otlp-proto-grpc==1.45.2",
    "opentelemetry-exporter-otlp-proto-http==1.45.2",
)
DIRECT_IMPORTS = (
    "grpc, gzip, http.client, google.rpc.error_details_pb2, "
    "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2, "
    "opentelemetry.proto.collector.logs.v1.logs_service_pb2"
)
SDK_IMPORTS = (
    "opentelemetry.sdk.metrics, opentelemetry.sdk._logs, opentelemetry.sdk.resources, "
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter, "
    "opentelemetry.exporter.otlp.proto.grpc._log_exporter, "
    "opentelemetry.exporter.otlp.proto.http.metric_exporter, "
    "opentelemetry.exporter.otlp.proto.http._log_exporter"
)
DIRECT_DISTS = ("opentelemetry-proto", "googleapis-common-protos")
AGENT_HAS = {"grpcio", "protobuf", "pip", "setuptools", "typing-extensions", "typing_extensions"}
RECEIVER = (
    "import sys; from sennet.testing.otlp_receiver import OtlpReceiver\n"
    "rx = OtlpReceiver().start(); print(rx.grpc_endpoint, rx.http_endpoint, flush=True)\n"
    "sys.stdin.read()"
)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def receiver() -> Iterator[tuple[str, str]]:
    """A receiver in a child process: its CPU is not the agent's."""
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        grpc_ep, http_ep = proc.stdout.readline().split()
        yield grpc_ep, http_ep
    finally:
        proc.kill()
        proc.wait()


def events(n: int, seed: int = 0) -> tuple[Event, ...]:
    """Events of every kind from 1,000 sources; source ports and lengths differ in each
    round (`seed`), so the encoder's attribute cache meets new values every time."""
    kinds = list(EventKind)
    now = time.monotonic_ns()
    return tuple(
        Event(now + i, 3, Direction(i & 1), kinds[i % len(kinds)], 64 + (i + seed) % 9000, 4, 6,
              1024 + (i + seed * n) % 64000, 443, 0x0800, 0x02, 0,
              f"10.0.{i % 250}.{i % 200 + 1}", "10.9.9.9")
        for i in range(n)
    )  # fmt: skip


def big_snapshot(rx: int, recent: tuple[Event, ...] = ()) -> Snapshot:
    bounds = layout.hist_upper_bounds_s()
    h = LatencyHistogram(bounds, tuple(range(len(bounds) + 1)), 1.5)
    talkers = tuple(
        Talker("eth1", "rx", 4, 6, f"10.0.0.{i}", "10.9.9.9", 40000 + i, 443, 0, i, i * 1000, 0x18)
        for i in range(10)
    )
    return Snapshot(
        agent_version="bench", kernel_version=os.uname().release, uptime_s=10.0, loader="libbpf",
        interfaces=(InterfaceCounters("eth1", 3, rx, rx * 700, rx // 2, rx * 300),
                    InterfaceCounters("eth2", 4, rx, rx * 700, rx // 2, rx * 300)),
        events_by_kind={k.label: rx for k in EventKind},
        ringbuf_drops_by_kind={k.label: 0 for k in EventKind},
        events_consumed=rx, recent_events=recent,
        flows=FlowReport(100, rx, rx - 100, 0, talkers, 65536),
        dns=DnsReport({"A": rx, "AAAA": rx}, {"NOERROR": rx}, h, 0, 0,
                      (NameCount("example.org", 5),)),
        tcp=TcpReport(h, h, 0, {"rx": 1, "tx": 2}, 3, 4, 5),
    )  # fmt: skip


def thread_cpu_s(tid: int) -> float:
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sink_to(endpoint: str, **kw: object) -> OtlpSink:
    opts = OtlpOptions((parse_endpoint(endpoint),), timeout_s=10.0, close_flush_s=10.0)
    return OtlpSink(replace(opts, **kw), "bench", rng=random.Random(1), capture_logs=False)  # type: ignore[arg-type]


def export_cpu(endpoint: str, rounds: int, n_events: int) -> tuple[float, float, int]:
    """(CPU s per round for n_events log records, CPU s per metrics export, export bytes)."""
    sink = sink_to(endpoint)
    try:
        sink.send(big_snapshot(1))  # warm up: connection, first-time costs
        if not sink.flush(30):
            raise HarnessError("warm-up export did not finish")
        tid = sink._thread.native_id
        assert tid is not None
        log_cpu, metric_cpu = [], []
        sizes = []
        for r in range(rounds):
            batch = events(n_events, seed=r)
            quiet = big_snapshot(2 + r)
            before_logs = sink.stats().exported[LOGS]
            t0, s0 = time.thread_time(), thread_cpu_s(tid)
            sink.send(replace(quiet, recent_events=batch))
            t1 = time.thread_time()
            if not sink.flush(60):
                raise HarnessError("export did not finish")
            with_events = (t1 - t0) + (thread_cpu_s(tid) - s0)
            if sink.stats().exported[LOGS] - before_logs != n_events:
                raise HarnessError(f"round {r}: not every log record was accepted")
            t0, s0 = time.thread_time(), thread_cpu_s(tid)
            for _ in range(20):
                sink.send(quiet)
            t1 = time.thread_time()
            if not sink.flush(60):
                raise HarnessError("export did not finish")
            metrics_only = ((t1 - t0) + (thread_cpu_s(tid) - s0)) / 20
            sizes.append(len(sink._builder.request(quiet, time.time_ns()).SerializeToString()))  # type: ignore[union-attr]
            metric_cpu.append(metrics_only)
            log_cpu.append(with_events - metrics_only)
        return statistics.median(log_cpu), statistics.median(metric_cpu), max(sizes)
    finally:
        sink.close()


def queue_bound(limit: int, offered: int) -> tuple[int, float]:
    """(peak queue bytes, heap growth in bytes) while a down receiver's queue overflows."""
    sink = sink_to("grpc://127.0.0.1:9", queue_bytes=limit, timeout_s=0.5, close_flush_s=0.1)
    try:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        pushed = 0
        n = 0
        while pushed < offered:
            n += 1
            snap = big_snapshot(n, events(500, seed=n))
            sink.send(snap)
            pushed += 500 * 350  # about the encoded size of 500 records; only a stop rule
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        peak = sink.queue.peak_bytes
        if peak > limit:
            raise HarnessError(f"queue peak {peak} bytes above its limit {limit}")
        if not sink.stats().dropped[LOGS] or not sink.stats().dropped[METRICS]:
            raise HarnessError("the queue never overflowed: offer more")
        return peak, float(grown)
    finally:
        sink.close()


SIZE_SCRIPT = """
import json, sys
from importlib import metadata
def size(d): return sum((d.locate_file(f).stat().st_size for f in (d.files or ())
                         if d.locate_file(f).exists()), 0)
print(json.dumps({d.metadata["Name"].lower(): size(d) for d in metadata.distributions()}))
"""


def import_s(python: str, modules: str, runs: int) -> float:
    """CPU seconds (user + system) a fresh interpreter spends importing `modules`, the bare
    interpreter's start subtracted; CPU, not wall time, so a busy machine skews it less."""

    def once(code: str) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([python, "-c", code], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    bare = statistics.median(once("pass") for _ in range(runs))
    return statistics.median(once(f"import {modules}") for _ in range(runs)) - bare


def sdk_figures(runs: int) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="otlp-sdk-") as d:
        say("sdk: creating a virtualenv with the OpenTelemetry SDK and OTLP exporters (pip)")
        subprocess.run([sys.executable, "-m", "venv", d], check=True)
        python = f"{d}/bin/python"
        subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *SDK_PINS], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        sizes = json.loads(subprocess.run([python, "-c", SIZE_SCRIPT], check=True,
                                          capture_output=True, text=True).stdout)  # fmt: skip
        sdk_size = sum(v for k, v in sizes.items() if k not in AGENT_HAS)
        direct_size = sum(sizes[k] for k in DIRECT_DISTS)
        say("sdk: timing imports")
        direct = import_s(python, DIRECT_IMPORTS, runs)
        sdk = import_s(python, SDK_IMPORTS, runs)
    d_imp = Figure(
        "otlp.import.direct",
        direct * 1000,
        "ms CPU",
        "opentelemetry-proto + grpcio + http.client (what the agent uses)",
    )
    d_size = Figure(
        "otlp.size.direct", direct_size / 1e6, "MB", "installed: " + ", ".join(DIRECT_DISTS)
    )
    return [
        d_imp,
        Figure("otlp.import.sdk", sdk * 1000, "ms CPU", "SDK metrics+logs, gRPC+HTTP exporters",
               baseline=d_imp),
        d_size,
        Figure("otlp.size.sdk", sdk_size / 1e6, "MB",
               f"installed, {len([k for k in sizes if k not in AGENT_HAS])} distributions",
               baseline=d_size),
    ]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per figure per line")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--no-sdk", action="store_true", help="skip the SDK comparison (needs pip)")
    args = ap.parse_args()
    logging.getLogger("sennet").setLevel(logging.ERROR)  # the queue test overflows on purpose
    figures: list[Figure] = []
    with receiver() as (grpc_ep, http_ep):
        for name, ep in (("grpc", grpc_ep), ("http", http_ep)):
            say(f"export: {name}")
            logs, metrics, size = export_cpu(ep, args.rounds, args.events)
            figures += [
                Figure(f"otlp.logs.cpu_per_10k_events.{name}", logs * 1000 * 10_000 / args.events,
                       "ms", f"{args.events} events per round, median of {args.rounds}"),
                Figure(f"otlp.metrics.cpu_per_export.{name}", metrics * 1000, "ms",
                       "2 interfaces, 10 kinds, flows, DNS, TCP"),
            ]  # fmt: skip
    figures.append(Figure("otlp.metrics.export_bytes", size, "bytes", "encoded, before gzip"))
    say("queue: receiver down, 64 MiB offered to a 4 MiB queue")
    limit = 4 << 20
    peak, grown = queue_bound(limit, 64 << 20)
    figures += [
        Figure("otlp.queue.peak_bytes", peak, "bytes", f"limit {limit}"),
        Figure("otlp.queue.heap_growth", grown / 1e6, "MB", "tracemalloc, queue full"),
    ]
    if not args.no_sdk:
        figures += sdk_figures(runs=7)
    print(report(figures, args.json))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HarnessError as exc:
        say(f"harness: {exc}")
        sys.exit(3)

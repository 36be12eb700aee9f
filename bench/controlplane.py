#!/usr/bin/env python3
"""Control-plane benchmark: heartbeat throughput and latency over gRPC, and /metrics render time.

Load comes from h2load (Debian `nghttp2-client`), which sends real gRPC unary
calls from C (a 5-byte gRPC frame header + the serialized HeartbeatRequest,
`content-type: application/grpc`, `te: trailers`), so the client does not eat
the server's CPU the way a Python client would. Each simulated agent is one
h2load process with its own enrolled agent id and token.

Python's gRPC stack has a ceiling on this machine, so throughput is reported
as a ratio against a trivial handler (the standard health Check, grpc.aio)
measured in the same run with the same number of server processes sharing the
port (SO_REUSEPORT). Latency percentiles are measured at a stated, fixed load.
Every heartbeat h2load saw complete is cross-checked against the control
plane's own accepted counter (h2load cannot see gRPC status trailers).

    .venv/bin/python bench/controlplane.py            # table
    .venv/bin/python bench/controlplane.py --json     # one JSON object per figure
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from fleet_metrics import KINDS, bench_metrics
from sennet.controlplane import old_path
from sennet.controlplane.identity import Identity
from sennet.controlplane.store import Store
from sennet.proto import contract
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.controlplane import ControlPlane
from sennet.testing.figures import Figure, report
from sennet.testing.ports import free_port
from sennet.testing.process import PYTHON, LoggedProcess
from sennet.testing.scrape import scrape
from sennet.testing.telemetry import full_request

WRITER = ("--writer-process",)  # the control plane's flag for the writer in a child process
HEALTH = "/{}/Check".format(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)


# -- servers --------------------------------------------------------------------------------


def serve_trivial(port: int) -> None:
    """The baseline: grpc.aio with only the health service, sharing the port."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(1)

    asyncio.run(main())


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _children(pid: int) -> list[int]:
    """The live child processes of `pid` (a server's writer process, with `--writer-process`)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _cpu_s(pids: list[int], children: bool = True) -> float:
    """User + system CPU seconds the processes (all their threads, and with `children` their
    live child processes) have used so far.

    Throughput on a shared box moves with whatever else runs; the servers' own CPU
    time per call does much less, so both are reported.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    everyone = pids + [c for p in pids for c in _children(p)] if children else pids
    for pid in everyone:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


@contextmanager
def trivial_servers(procs: int, workdir: Path) -> Iterator[tuple[int, list[int]]]:
    port = free_port()
    started: list[LoggedProcess] = []
    try:
        for n in range(procs):
            server = LoggedProcess(
                f"trivial-{n}",
                [PYTHON, __file__, "--serve-trivial", str(port)],
                workdir / f"trivial-{n}.log",
            )
            started.append(server.start())
            server.wait_for_log("ready", timeout=20.0)
        yield port, [p.proc.pid for p in started if p.proc is not None]
    finally:
        for p in started:
            p.stop(timeout=10)


@dataclass
class ControlPlanes:
    """Several control-plane processes sharing one gRPC port (SO_REUSEPORT) and one database."""

    port: int
    members: list[ControlPlane]
    db: Path

    @property
    def pids(self) -> list[int]:
        return [cp.proc.pid for cp in self.members if cp.proc is not None]

    def _total(self, name: str) -> float:
        total = 0.0
        for cp in self.members:
            for (sample_name, _labels), value in scrape(cp.http + "/metrics", 30).items():
                if sample_name == name:
                    total += value
        return total

    def accepted(self) -> float:
        return self._total("sennet_controlplane_heartbeats_accepted_total")

    def commits(self) -> float:
        return self._total("sennet_controlplane_store_commits_total")


@contextmanager
def control_planes(
    procs: int, workdir: Path, extra: tuple[str, ...] = ()
) -> Iterator[ControlPlanes]:
    port = free_port()
    db = workdir / "cp.db"
    Store(db).migrate()
    members: list[ControlPlane] = []
    try:
        for n in range(procs):
            cp = ControlPlane(db, workdir, ["--reuse-port", *extra], name=f"cp-{n}")
            members.append(cp)
            cp.start(grpc_port=port)
        yield ControlPlanes(port, members, db)
    finally:
        for cp in members:
            cp.stop()


# -- load -----------------------------------------------------------------------------------


def grpc_frame(message: bytes) -> bytes:
    return struct.pack(">?I", False, len(message)) + message


def heartbeat_body(agent_id: str, insights: bool = False) -> bytes:
    """A realistic heartbeat: 2 interfaces, 6 event kinds, 4 recent events; with `insights`,
    also the flow, DNS and TCP parts of the test snapshot (3 talkers, 3 histograms)."""
    events = [
        pb.Event(
            ts_unix_ns=time.time_ns(),
            ifindex=3,
            direction=pb.DIRECTION_RX,
            kind="large_packet",
            pkt_len=9000,
            ip_version=4,
            l4_proto=17,
            src_port=4000 + n,
            dst_port=53,
            src_addr="10.0.0.1",
            dst_addr="10.0.0.2",
            eth_proto=0x0800,
        )
        for n in range(4)
    ]
    req = pb.HeartbeatRequest(
        agent_id=agent_id,
        agent_version="0.1.0",
        kernel_version="6.18.0",
        uptime_seconds=100.0,
        interfaces=[
            pb.InterfaceCounters(
                name=f"eth{i}",
                ifindex=2 + i,
                rx_packets=1000,
                rx_bytes=640000,
                tx_packets=900,
                tx_bytes=500000,
            )
            for i in range(2)
        ],
        events_by_kind={k: 5 for k in KINDS},
        ringbuf_drops_by_kind={k: 0 for k in KINDS},
        recent_events=events,
    )
    if insights:
        parts = full_request(agent_id)
        req.flows.CopyFrom(parts.flows)
        req.dns.CopyFrom(parts.dns)
        req.tcp.CopyFrom(parts.tcp)
        req.microbursts.extend(parts.microbursts)
    return grpc_frame(req.SerializeToString())


def enrol(target: str, db: Path, agents: int) -> list[tuple[str, str]]:
    bootstrap = Identity(Store(db)).create_bootstrap_token("bench").text
    out = []
    with grpc.insecure_channel(target) as ch:
        register = ch.unary_unary(
            contract.REGISTER.path,
            request_serializer=pb.RegisterRequest.SerializeToString,
            response_deserializer=pb.RegisterResponse.FromString,
        )
        for _ in range(agents):
            aid = str(uuid.uuid4())
            resp = register(
                pb.RegisterRequest(agent_id=aid, hostname="bench"),
                timeout=10,
                metadata=(("authorization", f"Bearer {bootstrap}"),),
            )
            out.append((aid, resp.agent_token))
    return out


@dataclass
class LoadResult:
    completed: int
    seconds: float
    latencies_us: list[int]

    @property
    def rps(self) -> float:
        return self.completed / self.seconds

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies_us)
        return data[min(len(data) - 1, int(q * len(data)))] / 1000.0


def h2load(
    port: int,
    path: str,
    bodies: Sequence[tuple[bytes, str | None]],
    workdir: Path,
    duration: float,
    streams: int,
    rps_per_client: float | None = None,
) -> LoadResult:
    """One h2load process per body (agent), all at once; (completed calls, latencies)."""
    procs = []
    for n, (body, token) in enumerate(bodies):
        body_file = workdir / f"body-{n}.bin"
        body_file.write_bytes(body)
        log = workdir / f"h2load-{n}.tsv"
        log.unlink(missing_ok=True)
        argv = [
            "h2load",
            "-c",
            "1",
            "-m",
            str(streams),
            "-D",
            f"{duration:.0f}",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-d",
            str(body_file),
            f"--log-file={log}",
        ]
        if token:
            argv += ["-H", f"authorization: Bearer {token}"]
        if rps_per_client:
            argv += ["--rps", f"{rps_per_client:.0f}"]
        argv.append(f"http://127.0.0.1:{port}{path}")
        procs.append(
            (subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), log)
        )
    completed, seconds, latencies = 0, 0.0, []
    for p, log in procs:
        out = p.communicate(timeout=duration + 60)[0].decode()
        m = re.search(r"finished in ([\d.]+)s", out)
        if p.returncode != 0 or m is None:
            raise SystemExit(f"h2load failed:\n{out}")
        seconds = max(seconds, float(m.group(1)))
        for line in log.read_text().splitlines():
            _, status, elapsed = line.split("\t")
            if status == "200":
                completed += 1
                latencies.append(int(elapsed))
    return LoadResult(completed, seconds, latencies)


def _cross_check(completed: int, accepted: float, in_flight: int) -> None:
    """h2load sees HTTP 200 even for a gRPC error, so compare with the server's own count.

    The server may have accepted up to `in_flight` more: calls still open when
    h2load's duration ended (committed, but the client had stopped listening).
    """
    if not 0 <= accepted - completed <= in_flight:
        raise SystemExit(
            f"h2load completed {completed} heartbeats but the control plane "
            f"accepted {accepted:.0f}: some calls failed in gRPC trailers"
        )


@dataclass
class HeartbeatRun:
    full: LoadResult
    paced: LoadResult
    per_commit: float
    rss_kib: int
    cpu_us: float  # server CPU time per heartbeat at maximum load (writer processes included)
    parent_cpu_us: float  # the same without the writer processes: the event loop's processes


@contextmanager
def _path(old: bool) -> Iterator[None]:
    """Processes started inside run the path before issue 16 (`old`) or the current one."""
    if old:
        os.environ[old_path.ENV] = "1"
    try:
        yield
    finally:
        os.environ.pop(old_path.ENV, None)


def _heartbeats(
    args: argparse.Namespace,
    workdir: Path,
    old: bool,
    insights: bool,
    stated: float | None,
    extra: tuple[str, ...] = (),
) -> HeartbeatRun:
    """Maximum load, then `stated` heartbeats/s (default: a fraction of this run's maximum)."""
    procs, agents = args.procs, args.agents
    with _path(old), control_planes(procs, workdir, extra) as cps:
        target = f"127.0.0.1:{cps.port}"
        enrolled = enrol(target, cps.db, agents)
        bodies = [(heartbeat_body(aid, insights), tok) for aid, tok in enrolled]
        before = cps.accepted()
        commits_before = cps.commits()
        cpu_before, parent_before = _cpu_s(cps.pids), _cpu_s(cps.pids, children=False)
        full = h2load(
            cps.port, contract.HEARTBEAT.path, bodies, workdir, args.duration, args.streams
        )
        cpu = _cpu_s(cps.pids) - cpu_before
        parent_cpu = _cpu_s(cps.pids, children=False) - parent_before
        accepted = cps.accepted() - before
        commits = cps.commits() - commits_before
        _cross_check(full.completed, accepted, agents * args.streams)
        rss_kib = _rss_kib(cps.pids)
        if stated is None:
            stated = max(1.0, round(full.rps * args.load_fraction / 10) * 10)
        before = cps.accepted()
        paced = h2load(
            cps.port,
            contract.HEARTBEAT.path,
            bodies,
            workdir,
            args.duration,
            args.streams,
            rps_per_client=stated / agents,
        )
        paced_accepted = cps.accepted() - before
        _cross_check(paced.completed, paced_accepted, agents * args.streams)
    return HeartbeatRun(
        full,
        paced,
        accepted / max(1.0, commits),
        rss_kib,
        cpu / max(1.0, accepted) * 1e6,
        parent_cpu / max(1.0, accepted) * 1e6,
    )


def bench_grpc(args: argparse.Namespace, workdir: Path) -> list[Figure]:
    figs = []
    procs, agents = args.procs, args.agents
    with trivial_servers(procs, workdir) as (port, pids):
        cpu_before = _cpu_s(pids)
        base = h2load(
            port, HEALTH, [(grpc_frame(b""), None)] * agents, workdir, args.duration, args.streams
        )
        base_cpu_us = (_cpu_s(pids) - cpu_before) / max(1, base.completed) * 1e6
    trivial = Figure(
        "trivial_handler_calls_per_s",
        round(base.rps, 1),
        "calls/s",
        note=f"grpc.aio health Check, {procs} processes, same port",
    )
    figs.append(trivial)
    trivial_cpu = Figure(
        "trivial_handler_cpu_per_call",
        round(base_cpu_us, 1),
        "us",
        note="server processes' CPU time (user + system) per call at maximum load",
    )
    figs.append(trivial_cpu)
    variants = [("", False)] + ([("_insights", True)] if args.heartbeat_insights else [])
    for suffix, insights in variants:
        what = "with flow, DNS and TCP parts" if insights else "interfaces, events"
        old = _heartbeats(args, workdir, True, insights, None)
        new = _heartbeats(args, workdir, False, insights, None)
        runs = [("_old_path", old), ("", new)]
        if args.writer_process:
            runs.append(
                ("_writer_process", _heartbeats(args, workdir, False, insights, None, WRITER))
            )
        for tag, run in runs:
            name = f"heartbeats{suffix}"
            note = (
                f"{what}; {procs} processes, {agents} agents x {args.streams} streams, "
                "durable (group commit, synchronous=FULL)"
            )
            if tag == "_old_path":
                note += "; SENNET_CONTROLPLANE_OLD_PATH=1"
            elif tag:
                note += "; --writer-process"
            figs.append(Figure(f"{name}_per_s{tag}", round(run.full.rps, 1), "heartbeats/s", note))
            figs.append(
                Figure(
                    f"{name}_vs_trivial_handler{tag}",
                    round(run.full.rps / base.rps, 3),
                    "ratio",
                    baseline=trivial,
                )
            )
            figs.append(
                Figure(
                    f"{name}_cpu_per_heartbeat{tag}",
                    round(run.cpu_us, 1),
                    "us",
                    note="server processes' CPU time per heartbeat at maximum load",
                )
            )
            if tag == "_writer_process":
                figs.append(
                    Figure(
                        f"{name}_cpu_per_heartbeat_without_writer{tag}",
                        round(run.parent_cpu_us, 1),
                        "us",
                        note="the servers' CPU without their writer processes",
                    )
                )
            figs.append(
                Figure(
                    f"{name}_vs_trivial_handler_by_cpu{tag}",
                    round(base_cpu_us / run.cpu_us, 3),
                    "ratio",
                    baseline=trivial_cpu,
                    note="trivial CPU per call / heartbeat CPU per call: the ratio on an idle box",
                )
            )
            figs.append(
                Figure(f"{name}_per_commit{tag}", round(run.per_commit, 1), "heartbeats/commit")
            )
            figs.append(
                Figure(f"{name}_p99_at_max_load{tag}", round(run.full.percentile(0.99), 2), "ms")
            )
            figs.append(
                Figure(
                    f"{name}_stated_load{tag}",
                    round(run.paced.rps, 1),
                    "heartbeats/s",
                    note=f"{args.load_fraction:.0%} of that path's measured maximum",
                )
            )
            figs.append(
                Figure(
                    f"{name}_p50_at_stated_load{tag}",
                    round(run.paced.percentile(0.50), 2),
                    "ms",
                )
            )
            figs.append(
                Figure(
                    f"{name}_p99_at_stated_load{tag}",
                    round(run.paced.percentile(0.99), 2),
                    "ms",
                )
            )
            figs.append(
                Figure(
                    f"{name}_server_rss{tag}",
                    round(run.rss_kib / 1024, 1),
                    "MiB",
                    note=f"sum over {procs} processes after the run",
                )
            )
        per_proc = new.full.rps / procs
        figs.append(
            Figure(
                f"processes_for_10000_per_s{suffix}",
                float(-(-10000 // max(1, int(per_proc)))),
                "processes",
                note=f"at {per_proc:.0f}/s per process measured here",
            )
        )
    return figs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    parser.add_argument("--procs", type=int, default=2, help="server processes (SO_REUSEPORT)")
    parser.add_argument("--agents", type=int, default=8, help="simulated agents (h2load each)")
    parser.add_argument("--streams", type=int, default=8, help="concurrent calls per agent")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load phase")
    parser.add_argument(
        "--load-fraction",
        type=float,
        default=0.5,
        help="stated load for latency, as a fraction of the measured maximum",
    )
    parser.add_argument("--metrics-agents", type=int, default=10000)
    parser.add_argument("--metrics-repeat", type=int, default=5, help="best of N renders")
    parser.add_argument("--skip-grpc", action="store_true", help="only the /metrics figures")
    parser.add_argument(
        "--skip-metrics", action="store_true", help="only the heartbeat (gRPC) figures"
    )
    parser.add_argument(
        "--heartbeat-insights",
        action="store_true",
        help="also heartbeats that carry flow, DNS and TCP parts",
    )
    parser.add_argument(
        "--metrics-without-insights",
        action="store_true",
        help="agents without flow, DNS and TCP series (the figure before they existed)",
    )
    parser.add_argument(
        "--metrics-histogram-step",
        type=int,
        default=1,
        help="the control plane's histogram_export_step for the /metrics figures",
    )
    parser.add_argument(
        "--writer-process",
        action="store_true",
        help="also heartbeats with each server's writer in a process of its own",
    )
    parser.add_argument("--serve-trivial", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_trivial:
        serve_trivial(args.serve_trivial)
        return 0
    load_before = os.getloadavg()[0]
    figs = []
    if not args.skip_metrics:
        figs += bench_metrics(
            args.metrics_agents,
            repeat=args.metrics_repeat,
            insights=not args.metrics_without_insights,
            histogram_step=args.metrics_histogram_step,
        )
    if not args.skip_grpc:
        with tempfile.TemporaryDirectory(prefix="sennet-bench-") as tmp:
            figs += bench_grpc(args, Path(tmp))
    figs.append(
        Figure(
            "host_load_average_1m",
            round(max(load_before, os.getloadavg()[0]), 2),
            "runnable tasks",
            note=f"{os.cpu_count()} cores; other work shares them",
        )
    )
    print(report(figs, args.json))
    if args.json:
        return 0
    cores = os.cpu_count() or 1
    print(
        f"\n{cores} cores here, shared by the servers and h2load. Scale-out: agents are "
        "sharded across control planes (each agent names one); on each machine P processes "
        "share the gRPC port (--reuse-port) and one SQLite file, whose writer commits a batch "
        "per fsync; one process per database serves /metrics with --fleet-refresh."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

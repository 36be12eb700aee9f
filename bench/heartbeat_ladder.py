#!/usr/bin/env python3
"""Where a heartbeat's server CPU goes over gRPC: grpc.aio with our pieces added one at a time.

`controlplane.py` gives the whole heartbeat's server CPU against a trivial
handler's; `heartbeat_cost.py` times each of our stages in a loop of its own;
the two do not add up (the stages are a fraction of the gap). This serves the
real heartbeat body to bare grpc.aio handlers on the benchmark's load (2
processes on one port, h2load, 8 agents x 8 streams) that each do one piece
more than the rung before, and gives the servers' CPU (user + system, all
threads) per call for each rung, rungs interleaved per round:

    bare       returns a fixed acknowledgement (grpc.aio's own share)
    metadata   + reading the `authorization` metadata
    auth_old_path  + the token check as before the verified token was reused
               (SENNET_CONTROLPLANE_OLD_PATH=1: the parse, SHA-256 and compare on
               every call); beside the next rung, not below it
    auth       + the token check (a token verified within `agent_token_cache` is reused)
    admit      + the decode
    validated  + `validate.heartbeat`
    queued     + the rest of `Calls.call`: Prometheus, the service, the queue to the
               writer thread and the acknowledgement back; the writer answers each
               group after 2 ms without touching SQLite
    stored     the real `Calls.call` with the real writer: the fold, the rows, the
               group COMMIT (synchronous=FULL) and the /metrics preparation
    process    the same with the writer in a process of its own (`writer_process.py`;
               its CPU is counted with the server's)

Each step's difference is what that piece costs in place, caches, threads and
all, which is what the stage loop cannot see.

    .venv/bin/python bench/heartbeat_ladder.py [--json] [--rounds 3] [--insights]
        [--rungs bare,metadata,auth_old_path,auth]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from controlplane import heartbeat_body
from grpc_rig import serve_unary, under_load
from sennet.controlplane import codec, old_path, validate
from sennet.controlplane.auth import Authenticator
from sennet.controlplane.calls import Calls
from sennet.controlplane.fleet import Fleet
from sennet.controlplane.grpc_server import metadata_value
from sennet.controlplane.identity import Identity
from sennet.controlplane.metrics import Exposition, ServerMetrics, Transport
from sennet.controlplane.sentinel_service import SentinelService
from sennet.controlplane.store import Store
from sennet.controlplane.update_offers import OfferBook
from sennet.controlplane.writer import HeartbeatWriter, Writer, _Pending
from sennet.controlplane.writer_process import ProcessWriter
from sennet.proto import contract
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.figures import Figure, report

RUNGS = (
    "bare",
    "metadata",
    "auth_old_path",
    "auth",
    "admit",
    "validated",
    "queued",
    "stored",
    "process",
)
# The rung each is measured against, where it is not the one listed before it.
BASELINE = {"auth": "metadata"}
STAND_IN_COMMIT_S = 0.002  # the `queued` writer's stand-in for a group commit


class _NoStoreWriter(HeartbeatWriter):
    """The writer thread, queue and acknowledgements, with the group's SQL left out."""

    def _commit(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        time.sleep(STAND_IN_COMMIT_S)
        now_ns = time.time_ns()
        for item in batch:
            item.future.set_result(pb.HeartbeatResponse(server_time_unix_ns=now_ns))


def serve(port: int, rung: str, db: Path) -> None:
    """One server process answering heartbeats with `rung`'s pieces, on the shared port."""
    if rung == "auth_old_path":
        os.environ[old_path.ENV] = "1"  # read by the Authenticator when it is made
    store = Store(db)
    fleet = Fleet(store.load_fleet())
    writer: Writer
    if rung == "process":
        writer = ProcessWriter(store, fleet, retention_s=86400.0)
    else:
        kind = _NoStoreWriter if rung == "queued" else HeartbeatWriter
        writer = kind(store, fleet, retention_s=86400.0)
    metrics = ServerMetrics(agents=lambda: len(fleet), commits=lambda: writer.commits)
    identity = Identity(store)
    auth = Authenticator(identity, cache_s=1.0)  # the control plane's default
    calls = Calls(
        SentinelService(identity, writer, fleet, auth, offers=OfferBook(store)),
        auth,
        metrics,
        1 << 20,
    )
    Exposition(metrics, fleet, 35.0)  # subscribes to the fleet, as app.py's does
    fixed = pb.HeartbeatResponse(server_time_unix_ns=1)

    async def handle(body: bytes, context: Any) -> pb.HeartbeatResponse:
        if rung == "bare":
            return fixed
        if rung in ("queued", "stored", "process"):
            authorization = metadata_value(context.invocation_metadata(), "authorization")
            answer = await calls.call(contract.HEARTBEAT, Transport.GRPC, authorization, body)
            assert isinstance(answer, pb.HeartbeatResponse)
            return answer
        authorization = metadata_value(context.invocation_metadata(), "authorization")
        if rung == "metadata":
            return fixed
        auth.authenticate(contract.HEARTBEAT, authorization)
        if rung in ("auth", "auth_old_path"):
            return fixed
        req = codec.from_proto(pb.HeartbeatRequest, body, 1 << 20)
        if rung == "validated":
            validate.heartbeat(req)
        return fixed

    async def main() -> None:
        writer.start()
        await serve_unary(
            port, contract.HEARTBEAT.path, handle, pb.HeartbeatResponse.SerializeToString
        )
        writer.stop()

    asyncio.run(main())


def enrolled_bodies(db: Path, agents: int, insights: bool) -> list[tuple[bytes, str | None]]:
    """A fresh database with `agents` enrolled; each one's heartbeat body and token."""
    store = Store(db)
    store.migrate()
    identity = Identity(store)
    bootstrap = identity.create_bootstrap_token("bench")
    bodies: list[tuple[bytes, str | None]] = []
    for n in range(agents):
        agent_id = str(uuid.uuid4())
        token = identity.enrol(
            pb.RegisterRequest(agent_id=agent_id, hostname=f"bench-{n}"),
            bootstrap.kind,
            bootstrap.token_id,
        )
        bodies.append((heartbeat_body(agent_id, insights), token.text))
    store.close()
    return bodies


def measure(
    args: argparse.Namespace, rung: str, bodies: list[tuple[bytes, str | None]], workdir: Path
) -> tuple[float, float]:
    """(calls/s, server CPU µs per call) of one rung at the benchmark's full load."""
    load, us = under_load(
        rung,
        lambda port: [__file__, "--serve", str(port), rung, str(workdir / "cp.db")],
        procs=args.procs,
        path=contract.HEARTBEAT.path,
        bodies=bodies,
        workdir=workdir,
        duration=args.duration,
        streams=args.streams,
        warmup_s=2,
    )
    return load.rps, us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    parser.add_argument("--procs", type=int, default=2, help="server processes (SO_REUSEPORT)")
    parser.add_argument("--agents", type=int, default=8, help="h2load clients, one agent each")
    parser.add_argument("--streams", type=int, default=8, help="concurrent calls per client")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per rung")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is given")
    parser.add_argument("--insights", action="store_true", help="bodies with flow/DNS/TCP parts")
    parser.add_argument(
        "--rungs",
        default=",".join(RUNGS),
        help="comma-separated rungs to measure, in the ladder's order (default: all)",
    )
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "RUNG", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        port, rung, db = args.serve
        if rung not in RUNGS:
            parser.error(f"--serve: rung {rung!r} is not one of {', '.join(RUNGS)}")
        serve(int(port), rung, Path(db))
        return 0
    wanted = args.rungs.split(",")
    unknown = [r for r in wanted if r not in RUNGS]
    if unknown:
        parser.error(f"--rungs: {', '.join(unknown)} not among {', '.join(RUNGS)}")
    rungs = [r for r in RUNGS if r in wanted]
    cpu: dict[str, list[float]] = {r: [] for r in rungs}
    rps: dict[str, list[float]] = {r: [] for r in rungs}
    with tempfile.TemporaryDirectory(prefix="sennet-ladder-") as tmp:
        workdir = Path(tmp)
        bodies = enrolled_bodies(workdir / "cp.db", args.agents, args.insights)
        for _ in range(args.rounds):  # rungs interleaved per round: the neighbours' load moves
            for rung in rungs:
                calls_per_s, us = measure(args, rung, bodies, workdir)
                rps[rung].append(calls_per_s)
                cpu[rung].append(us)
    what = "with flow, DNS and TCP parts" if args.insights else "plain heartbeat body"
    figs: list[Figure] = []
    by_rung: dict[str, Figure] = {}
    previous: Figure | None = None
    for rung in rungs:
        spread = "/".join(f"{v:.0f}" for v in cpu[rung])
        fig = Figure(
            f"ladder_{rung}_cpu_per_call",
            round(statistics.median(cpu[rung]), 1),
            "us",
            note=f"{what}; median of {spread}; {statistics.median(rps[rung]):.0f} calls/s",
            baseline=by_rung.get(BASELINE.get(rung, ""), previous),
        )
        figs.append(fig)
        by_rung[rung] = previous = fig
    print(report(figs, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Where a heartbeat's server CPU goes: each stage of the control plane's path, in-process.

`bench/controlplane.py` measures the whole path over gRPC against a trivial
handler; this splits the part that is ours into the stages a heartbeat passes
(auth, decode, validation, the writer's fold into the agent's totals, the
SQLite rows, the commit, /metrics preparation), each timed with the thread's
own CPU clock on the real objects (a real SQLite file with synchronous=FULL, a
real enrolled token), best of several rounds. Thread CPU time leaves out time
spent waiting for a CPU, so the figures hold on a shared machine where wall
times do not. The commit's fsync is wall time (it waits on the disk, not a CPU)
and is reported per group of `--group` heartbeats.

    .venv/bin/python bench/heartbeat_cost.py            # table
    .venv/bin/python bench/heartbeat_cost.py --json     # one JSON object per figure

Last, `end_to_end_without_grpc` runs the whole path in-process (`Calls.call`
from 64 concurrent callers to the acknowledgement after the group commit) and
gives the process's CPU per heartbeat, every thread included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from controlplane import heartbeat_body
from sennet.controlplane import codec, old_path, validate
from sennet.controlplane.auth import Authenticator
from sennet.controlplane.calls import Calls
from sennet.controlplane.fleet import AgentView, Fleet, Series, SeriesKey
from sennet.controlplane.identity import Identity
from sennet.controlplane.metrics import Exposition, ServerMetrics, Transport
from sennet.controlplane.sentinel_service import SentinelService
from sennet.controlplane.store import Store
from sennet.controlplane.update_offers import OfferBook
from sennet.controlplane.writer import HeartbeatWriter
from sennet.proto import contract
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.figures import Figure, report


def _best_us(fn: Callable[[], object], per_round: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        for _ in range(per_round):
            fn()
        best = min(best, time.thread_time() - started)
    return best / per_round * 1e6


def stages(insights: bool, group: int, rounds: int, workdir: Path) -> list[Figure]:
    """CPU per heartbeat of each stage, for the benchmark's heartbeat body."""
    db = workdir / f"cost-{int(insights)}.db"
    store = Store(db)
    store.migrate()
    identity = Identity(store)
    bootstrap = identity.create_bootstrap_token("bench")
    agent_id = str(uuid.uuid4())
    token = identity.enrol(
        pb.RegisterRequest(agent_id=agent_id, hostname="bench"), bootstrap.kind, bootstrap.token_id
    )
    auth = Authenticator(identity, cache_s=1.0)
    os.environ[old_path.ENV] = "1"  # read when the Authenticator is made
    auth_old = Authenticator(identity, cache_s=1.0)
    os.environ.pop(old_path.ENV)
    authorization = f"Bearer {token.text}"
    body = heartbeat_body(agent_id, insights)[5:]  # without the gRPC frame header
    req = codec.from_proto(pb.HeartbeatRequest, body, 1 << 20)
    view = AgentView(agent_id).apply(req, time.time())[0]
    later = pb.HeartbeatRequest()
    later.CopyFrom(req)
    for itf in later.interfaces:  # counters move every interval
        itf.rx_packets += 10
        itf.rx_bytes += 6400
    conn = store.connect()
    folded, changed = view.apply(later, time.time())  # the fold is timed on its own below

    every = dict(folded.series)  # a busy agent: every counter moved since its last heartbeat
    # the agent's first heartbeat, committed: its series row exists, with these keys, so the
    # writer rewrites only the totals of a later one that gained no series (keys_stored)
    conn.execute("BEGIN IMMEDIATE")
    store.insert_heartbeat(conn, req, time.time(), view, dict(view.series))
    conn.execute("COMMIT")

    def write_group(moved: dict[SeriesKey, Series] = changed) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(group):
            store.insert_heartbeat(conn, later, time.time(), folded, moved, keys_stored=True)
        conn.execute("ROLLBACK")  # CPU of the rows only; the commit is timed apart

    def commit_group() -> None:
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(group):
            store.insert_heartbeat(conn, later, time.time(), folded, changed, keys_stored=True)
        conn.execute("COMMIT")

    # /metrics preparation as the writer triggers it: publishing a committed view
    fleet = Fleet([view])
    expo = Exposition(ServerMetrics(agents=lambda: 1), fleet, 35.0)
    expo.render()
    published = [view.apply(later, time.time())[0] for _ in range(8)]

    def publish() -> None:
        for v in published:
            fleet.publish({agent_id: v})

    def publish_after_scrape() -> float:
        """CPU of publishing one view right after a scrape (the scrape itself not counted)."""
        spent = 0.0
        for v in published:
            expo.render()
            started = time.thread_time()
            fleet.publish({agent_id: v})
            spent += time.thread_time() - started
        return spent / len(published) * 1e6

    per = 200
    figures = {
        "auth": _best_us(lambda: auth.authenticate(contract.HEARTBEAT, authorization), per, rounds),
        "decode": _best_us(
            lambda: codec.from_proto(pb.HeartbeatRequest, body, 1 << 20), per, rounds
        ),
        "validate": _best_us(lambda: validate.heartbeat(req), per, rounds),
        "fold": _best_us(lambda: view.apply(later, time.time()), per, rounds),
        "rows": _best_us(write_group, max(1, per // group), rounds) / group,
        "metrics_prepare": _best_us(publish, per // 8, rounds) / 8,
    }
    apart = {
        "auth_old_path": _best_us(
            lambda: auth_old.authenticate(contract.HEARTBEAT, authorization), per, rounds
        ),
        "rows_every_series_moved": _best_us(
            lambda: write_group(every), max(1, per // group), rounds
        )
        / group,
        "metrics_prepare_after_scrape": min(publish_after_scrape() for _ in range(rounds)),
    }
    walls = []
    for _ in range(rounds):
        started = time.perf_counter()
        commit_group()
        walls.append(time.perf_counter() - started)
    cpu_commit = _best_us(commit_group, 1, rounds) / group - figures["rows"]
    conn.close()
    store.close()
    what = "with flow, DNS and TCP parts" if insights else "interfaces and events"
    prefix = "heartbeat_cost" + ("_insights" if insights else "")
    notes = {
        "auth": "the verified token reused (parse, cached row, SHA-256 once per cache lapse)",
        "auth_old_path": "as auth, SENNET_CONTROLPLANE_OLD_PATH=1: parse, cached row, SHA-256"
        " compare on every call (not in ours_total)",
        "decode": "protobuf parse of the body",
        "validate": "validate.heartbeat (incl. flow, DNS, TCP parts)",
        "fold": "AgentView.apply: readings folded into the agent's totals",
        "rows": f"Store.insert_heartbeat (samples packed, events, series) in a group of {group}"
        ", interface counters moved",
        "metrics_prepare": "Fleet.publish of a new view, 8 heartbeats between two scrapes",
        "rows_every_series_moved": f"as rows, every one of the {len(every)} series moved"
        " (not in ours_total)",
        "metrics_prepare_after_scrape": "Fleet.publish of the first view after a scrape"
        " (not in ours_total)",
    }
    out = [
        Figure(f"{prefix}.{name}", round(value, 1), "us", note=notes[name])
        for name, value in (figures | apart).items()
    ]
    out.append(
        Figure(
            f"{prefix}.commit_cpu",
            round(max(0.0, cpu_commit), 1),
            "us",
            note=f"COMMIT's CPU per heartbeat, group of {group}",
        )
    )
    out.append(
        Figure(
            f"{prefix}.ours_total",
            round(sum(figures.values()) + max(0.0, cpu_commit), 1),
            "us",
            note=f"{what}: every stage above, per heartbeat",
        )
    )
    out.append(
        Figure(
            f"{prefix}.group_commit_wall",
            round(min(walls) * 1000, 2),
            "ms",
            note=f"{group} heartbeats written and committed (fsync, synchronous=FULL), wall",
        )
    )
    return out


def end_to_end(insights: bool, heartbeats: int, workdir: Path) -> Figure:
    """CPU of the whole path without gRPC: `Calls.call` from 64 concurrent callers, all threads.

    The stages above are timed one by one in a loop, on hot caches and one
    thread; this runs the real objects as `app.py` assembles them (event loop,
    writer thread, group commits, wake-ups, Prometheus counters, /metrics
    subscribers) and divides the process's CPU time (user + system, every
    thread) by the heartbeats acknowledged. What it adds to the stages is the
    cost of the path around them; grpc.aio's own share is apart
    (`grpc_skeleton.py`).
    """
    store = Store(workdir / f"e2e-{int(insights)}.db")
    store.migrate()
    fleet = Fleet(store.load_fleet())
    writer = HeartbeatWriter(store, fleet, retention_s=86400.0)
    metrics = ServerMetrics(agents=lambda: len(fleet), commits=lambda: writer.commits)
    identity = Identity(store)
    auth = Authenticator(identity, cache_s=60.0)
    service = SentinelService(identity, writer, fleet, auth, offers=OfferBook(store))
    calls = Calls(service, auth, metrics, 1 << 20)
    Exposition(metrics, fleet, 35.0)
    bootstrap = identity.create_bootstrap_token("bench")
    callers = []
    for n in range(8):  # 8 agents x 8 concurrent calls, as bench/controlplane.py loads gRPC
        agent_id = str(uuid.uuid4())
        token = identity.enrol(
            pb.RegisterRequest(agent_id=agent_id, hostname=f"bench-{n}"),
            bootstrap.kind,
            bootstrap.token_id,
        )
        fleet.enrolled(agent_id, f"bench-{n}", "", "", time.time())
        callers += [(f"Bearer {token.text}", heartbeat_body(agent_id, insights)[5:])] * 8
    writer.start()

    async def load() -> float:
        left = heartbeats

        async def caller(authorization: str, body: bytes) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await calls.call(contract.HEARTBEAT, Transport.GRPC, authorization, body)

        spent = float("inf")
        for _ in range(2):  # the first round warms caches and the WAL
            left = heartbeats
            started = time.process_time()
            await asyncio.gather(*(caller(a, b) for a, b in callers))
            spent = time.process_time() - started
        return spent

    try:
        spent = asyncio.run(load())
    finally:
        writer.stop()
        store.close()
    what = "with flow, DNS and TCP parts" if insights else "interfaces and events"
    return Figure(
        "heartbeat_cost" + ("_insights" if insights else "") + ".end_to_end_without_grpc",
        round(spent / heartbeats * 1e6, 1),
        "us",
        note=f"{what}: Calls.call to acknowledgement, process CPU (all threads)",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    parser.add_argument("--group", type=int, default=16, help="heartbeats per commit")
    parser.add_argument("--rounds", type=int, default=7, help="best of N rounds")
    parser.add_argument(
        "--end-to-end", type=int, default=4000, help="heartbeats through Calls.call (0: skip)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sennet-cost-") as tmp:
        figs = stages(False, args.group, args.rounds, Path(tmp))
        figs += stages(True, args.group, args.rounds, Path(tmp))
        if args.end_to_end:
            figs += [end_to_end(insights, args.end_to_end, Path(tmp)) for insights in (False, True)]
    print(report(figs, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())

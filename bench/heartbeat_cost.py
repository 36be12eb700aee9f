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
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from controlplane import heartbeat_body
from sennet.controlplane import codec, validate
from sennet.controlplane.auth import Authenticator
from sennet.controlplane.fleet import AgentView, Fleet, Series, SeriesKey
from sennet.controlplane.identity import Identity
from sennet.controlplane.metrics import Exposition, ServerMetrics
from sennet.controlplane.store import Store
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

    def write_group(moved: dict[SeriesKey, Series] = changed) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(group):
            store.insert_heartbeat(conn, later, time.time(), folded, moved)
        conn.execute("ROLLBACK")  # CPU of the rows only; the commit is timed apart

    def commit_group() -> None:
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(group):
            store.insert_heartbeat(conn, later, time.time(), folded, changed)
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
        "auth": "token parse, cached row, SHA-256 compare",
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    parser.add_argument("--group", type=int, default=16, help="heartbeats per commit")
    parser.add_argument("--rounds", type=int, default=7, help="best of N rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sennet-cost-") as tmp:
        figs = stages(False, args.group, args.rounds, Path(tmp))
        figs += stages(True, args.group, args.rounds, Path(tmp))
    print(report(figs, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())

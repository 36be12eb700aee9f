"""SQLite rows for a heartbeat's flow, microburst, DNS and TCP parts (schema migration 4).

Each part is written as the agent sent it, in the heartbeat's own transaction
and keyed by its heartbeat id, so retention deletes it with the heartbeat.
The latest heartbeat's gauges (active flows, top talkers, microbursts, top
names) are read back on start, so /metrics after a control-plane restart shows
what it showed before, as it does for the counters.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from typing import Any

from sennet.controlplane import fleet_insights as fi
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb


def insert(conn: sqlite3.Connection, hb_id: int, req: pb.HeartbeatRequest) -> None:
    """Write the parts `req` carries (an old agent's heartbeat writes nothing here)."""
    if req.HasField("flows"):
        f = req.flows
        conn.execute(
            "INSERT INTO flow_samples VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                hb_id,
                f.active,
                f.capacity,
                f.created_total,
                f.ended_total,
                f.lost_total,
                f.evicted_total,
            ),
        )
        conn.executemany(
            "INSERT INTO talkers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    hb_id,
                    rank,
                    t.interface,
                    fi.DIRECTION[t.direction],
                    t.ip_version,
                    t.l4_proto,
                    t.src_addr,
                    t.dst_addr,
                    t.src_port,
                    t.dst_port,
                    t.vlan_id,
                    t.packets,
                    t.bytes,
                    t.tcp_flags,
                )
                for rank, t in enumerate(f.top_talkers, start=1)
            ],
        )
    conn.executemany(
        "INSERT INTO microbursts VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                hb_id,
                m.interface,
                fi.DIRECTION[m.direction],
                m.window_ms,
                m.max_packets,
                m.max_bytes,
            )
            for m in req.microbursts
        ],
    )
    if req.HasField("dns"):
        d = req.dns
        conn.execute(
            "INSERT INTO dns_samples VALUES (?, ?, ?)",
            (hb_id, d.unanswered_total, d.malformed_total),
        )
        conn.executemany(
            "INSERT INTO dns_counts VALUES (?, ?, ?, ?)",
            [(hb_id, "qtype", k, v) for k, v in sorted(d.queries_by_type.items())]
            + [(hb_id, "rcode", k, v) for k, v in sorted(d.responses_by_rcode.items())],
        )
        conn.executemany(
            "INSERT INTO dns_names VALUES (?, ?, ?, ?, ?)",
            [
                (hb_id, which, rank, n.name, n.count)
                for which, names in (("queried", d.top_queried), ("failing", d.top_failing))
                for rank, n in enumerate(names, start=1)
            ],
        )
    if req.HasField("tcp"):
        t = req.tcp
        conn.execute(
            "INSERT INTO tcp_samples VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                hb_id,
                t.attempts_unanswered_total,
                t.resets_by_direction.get("rx", 0),
                t.resets_by_direction.get("tx", 0),
                t.retransmits_total,
                t.zero_windows_total,
                t.malformed_total,
            ),
        )
    rows = []
    for name, (summary, field) in fi.HISTOGRAMS.items():
        if req.HasField(summary) and getattr(req, summary).HasField(field):
            h = getattr(getattr(req, summary), field)
            bounds, counts = json.dumps(list(h.bounds_seconds)), json.dumps(list(h.counts))
            rows.append((hb_id, name, bounds, counts, h.sum_seconds))
    conn.executemany("INSERT INTO histogram_samples VALUES (?, ?, ?, ?, ?)", rows)


def latest_telemetry(
    conn: sqlite3.Connection, agent_id: str | None = None
) -> dict[str, fi.Telemetry]:
    """Each agent's gauges from its newest stored heartbeat (agents with none are left out).

    One query per table for the whole fleet (a restart or a --fleet-refresh reload
    reads every agent), or for one agent (`agent_id`, the writer's reload).
    """
    if agent_id is None:
        latest = "SELECT max(heartbeat_id) FROM heartbeats GROUP BY agent_id"
        args: tuple[str, ...] = ()
    else:
        latest = "SELECT max(heartbeat_id) FROM heartbeats WHERE agent_id = ?"
        args = (agent_id,)

    def rows(sql: str) -> list[tuple[Any, ...]]:
        return conn.execute(sql.format(latest=latest), args).fetchall()

    owner = dict(
        rows("SELECT heartbeat_id, agent_id FROM heartbeats WHERE heartbeat_id IN ({latest})")
    )
    flows = {
        hb: (active, capacity)
        for hb, active, capacity in rows(
            "SELECT heartbeat_id, active, capacity FROM flow_samples"
            " WHERE heartbeat_id IN ({latest})"
        )
    }
    dns = {
        hb
        for (hb,) in rows("SELECT heartbeat_id FROM dns_samples WHERE heartbeat_id IN ({latest})")
    }
    talkers: dict[int, list[fi.TalkerRow]] = defaultdict(list)
    for hb, *row in rows(
        "SELECT heartbeat_id, interface, direction, ip_version, l4_proto, src_addr, dst_addr,"
        " src_port, dst_port, vlan_id, packets, bytes, tcp_flags FROM talkers"
        " WHERE heartbeat_id IN ({latest}) ORDER BY heartbeat_id, rank"
    ):
        talkers[hb].append(fi.TalkerRow(*row))
    bursts: dict[int, list[fi.BurstRow]] = defaultdict(list)
    for hb, *row in rows(
        "SELECT heartbeat_id, interface, direction, window_ms, max_packets, max_bytes"
        " FROM microbursts WHERE heartbeat_id IN ({latest})"
    ):
        bursts[hb].append(fi.BurstRow(*row))
    names: dict[tuple[int, str], list[fi.NameRow]] = defaultdict(list)
    for hb, which, name, count in rows(
        "SELECT heartbeat_id, list, name, count FROM dns_names"
        " WHERE heartbeat_id IN ({latest}) ORDER BY heartbeat_id, list, rank"
    ):
        names[(hb, which)].append(fi.NameRow(name, count))
    out: dict[str, fi.Telemetry] = {}
    for hb, aid in owner.items():
        if hb not in flows and hb not in dns and not bursts.get(hb):
            continue  # the newest heartbeat has none of the gauges (telemetry_of: None)
        active, capacity = flows.get(hb, (None, None))
        out[aid] = fi.Telemetry(
            flows_active=active,
            flows_capacity=capacity,
            talkers=tuple(talkers.get(hb, ())),
            bursts=tuple(bursts.get(hb, ())),
            top_queried=tuple(names.get((hb, "queried"), ())),
            top_failing=tuple(names.get((hb, "failing"), ())),
        )
    return out

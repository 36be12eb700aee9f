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
from collections.abc import Iterable

from sennet.controlplane import fleet_insights as fi
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb


def insert(conn: sqlite3.Connection, hb_id: int, req: pb.HeartbeatRequest) -> None:
    """Write the parts `req` carries (an old agent's heartbeat writes nothing here)."""
    if req.HasField("flows"):
        f = req.flows
        conn.execute(
            "INSERT INTO flow_samples VALUES (?, ?, ?, ?, ?, ?)",
            (hb_id, f.active, f.capacity, f.created_total, f.ended_total, f.lost_total),
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
    conn: sqlite3.Connection, agent_ids: Iterable[str] | None = None
) -> dict[str, fi.Telemetry]:
    """Each agent's gauges from its newest stored heartbeat (agents with none are left out)."""
    latest: dict[int, str] = {}
    if agent_ids is None:
        query = "SELECT agent_id, max(heartbeat_id) FROM heartbeats GROUP BY agent_id"
        latest = {hb: aid for aid, hb in conn.execute(query)}
    else:
        for aid in agent_ids:
            row = conn.execute(
                "SELECT max(heartbeat_id) FROM heartbeats WHERE agent_id = ?", (aid,)
            ).fetchone()
            if row[0] is not None:
                latest[int(row[0])] = aid
    out: dict[str, fi.Telemetry] = {}
    for hb_id, aid in latest.items():
        telemetry = _telemetry(conn, hb_id)
        if telemetry is not None:
            out[aid] = telemetry
    return out


def _telemetry(conn: sqlite3.Connection, hb_id: int) -> fi.Telemetry | None:
    flows = conn.execute(
        "SELECT active, capacity FROM flow_samples WHERE heartbeat_id = ?", (hb_id,)
    ).fetchone()
    has_dns = conn.execute("SELECT 1 FROM dns_samples WHERE heartbeat_id = ?", (hb_id,)).fetchone()
    bursts = tuple(
        fi.BurstRow(*row)
        for row in conn.execute(
            "SELECT interface, direction, window_ms, max_packets, max_bytes FROM microbursts"
            " WHERE heartbeat_id = ?",
            (hb_id,),
        )
    )
    if flows is None and has_dns is None and not bursts:
        return None
    talkers = tuple(
        fi.TalkerRow(*row)
        for row in conn.execute(
            "SELECT interface, direction, ip_version, l4_proto, src_addr, dst_addr, src_port,"
            " dst_port, vlan_id, packets, bytes, tcp_flags FROM talkers WHERE heartbeat_id = ?"
            " ORDER BY rank",
            (hb_id,),
        )
    )

    def names(which: str) -> tuple[fi.NameRow, ...]:
        return tuple(
            fi.NameRow(*row)
            for row in conn.execute(
                "SELECT name, count FROM dns_names WHERE heartbeat_id = ? AND list = ?"
                " ORDER BY rank",
                (hb_id, which),
            )
        )

    return fi.Telemetry(
        flows_active=None if flows is None else flows[0],
        flows_capacity=None if flows is None else flows[1],
        talkers=talkers,
        bursts=bursts,
        top_queried=names("queried"),
        top_failing=names("failing"),
    )

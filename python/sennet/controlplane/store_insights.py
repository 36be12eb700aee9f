"""A heartbeat's stored flow, microburst and DNS gauges, read back on start.

The parts are written as the agent sent them, packed on the heartbeat's own
row (`store_samples.py`), and read here through the views of schema migration
6 that keep the tables' old names and columns. The latest heartbeat's gauges
(active flows, top talkers, microbursts, top names) are read back on start, so
/metrics after a control-plane restart shows what it showed before, as it does
for the counters.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from typing import Any

from sennet.controlplane import fleet_insights as fi


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

"""A heartbeat's samples packed into one JSON text on its own row (schema migration 6).

Writing a heartbeat's readings as one row per interface, event kind, event,
talker, microburst, name, count and histogram cost most of the writer's SQL
time: 13 rows in four tables for a plain heartbeat with 4 events, 38 in twelve
with every part, each bound in Python and a separate B-tree insert. The writer
now encodes them once (the C JSON encoder) into the `samples` column of the
heartbeat's own row, and one INSERT stores the lot.

Readers are unchanged: migration 6 (`schema.py`) replaces the old tables by
views of the same names and columns that unpack the text with SQLite's JSON
functions, so `/metrics` start-up, `store_insights.latest_telemetry`, the
CLI's and operators' SQL and retention (the samples go with their heartbeat
row) read exactly what they read before. An event's `event_id` is now
`heartbeat_id * 1024 + its place in the heartbeat` (at most 1024 events per
heartbeat, `validate.MAX_EVENTS`): unique, and in the order events were stored.

The packed form, one key per part the heartbeat carries (absent parts are
left out, so an old agent's heartbeat writes `{"i":…,"k":…}` only). Each view is one
`json_each` over one key, never a UNION, so SQLite flattens it into the query
and a condition on `heartbeat_id` (even `IN (subquery)`) is a rowid lookup:

    i  [[ifname, ifindex, rx_packets, rx_bytes, tx_packets, tx_bytes], …]
    k  [[kind, events, ringbuf_drops], …]              (sorted by kind)
    e  [[ts_unix_ns, ifindex, direction, kind, pkt_len, ip_version, l4_proto, src_port,
         dst_port, src_addr, dst_addr, tcp_flags, vlan_tags, eth_proto, seq], …]  (as sent)
    f  [active, capacity, created, ended, lost, evicted]
    t  [[interface, direction, ip_version, l4_proto, src_addr, dst_addr,
         src_port, dst_port, vlan_id, packets, bytes, tcp_flags], …]  (rank order)
    m  [[interface, direction, window_ms, max_packets, max_bytes], …]
    d  [unanswered_total, malformed_total]
    dc [[what, key, count], …]         (what: qtype or rcode; sorted by what, key)
    n  [[list, rank, name, count], …]  (list: queried or failing)
    c  [attempts_unanswered, resets_rx, resets_tx, retransmits, zero_windows, malformed]
    h  [[histogram, bounds_seconds, counts, sum_seconds], …]   (bounds and counts as the
                                                               JSON text the table held)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from sennet.controlplane import fleet_insights as fi
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

# compact, no circularity check (plain lists), NaN refused (validation refuses it first)
_encode = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, check_circular=False, allow_nan=False
).encode


def pack(req: pb.HeartbeatRequest, events: Sequence[pb.Event] = ()) -> str:
    """The `samples` text of one heartbeat with `events`, those of its events not stored before."""
    out: dict[str, Any] = {
        "i": [
            [i.name, i.ifindex, i.rx_packets, i.rx_bytes, i.tx_packets, i.tx_bytes]
            for i in req.interfaces
        ],
    }
    by_kind = req.events_by_kind
    drops = req.ringbuf_drops_by_kind
    if drops:
        kinds = sorted(set(by_kind) | set(drops))
        out["k"] = [[k, by_kind.get(k, 0), drops.get(k, 0)] for k in kinds]
    else:
        out["k"] = [[k, n, 0] for k, n in sorted(by_kind.items())]
    direction = fi.DIRECTION
    if events:
        out["e"] = [
            [
                e.ts_unix_ns,
                e.ifindex,
                direction[e.direction],
                e.kind,
                e.pkt_len,
                e.ip_version,
                e.l4_proto,
                e.src_port,
                e.dst_port,
                e.src_addr,
                e.dst_addr,
                e.tcp_flags,
                e.vlan_tags,
                e.eth_proto,
                e.seq,
            ]
            for e in events
        ]
    if req.HasField("flows"):
        f = req.flows
        out["f"] = [
            f.active,
            f.capacity,
            f.created_total,
            f.ended_total,
            f.lost_total,
            f.evicted_total,
        ]
        if f.top_talkers:
            out["t"] = [
                [
                    t.interface,
                    direction[t.direction],
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
                ]
                for t in f.top_talkers
            ]
    if req.microbursts:
        out["m"] = [
            [m.interface, direction[m.direction], m.window_ms, m.max_packets, m.max_bytes]
            for m in req.microbursts
        ]
    if req.HasField("dns"):
        d = req.dns
        out["d"] = [d.unanswered_total, d.malformed_total]
        counts = [["qtype", k, n] for k, n in sorted(d.queries_by_type.items())]
        counts += [["rcode", k, n] for k, n in sorted(d.responses_by_rcode.items())]
        if counts:
            out["dc"] = counts
        names = [["queried", r, n.name, n.count] for r, n in enumerate(d.top_queried, start=1)]
        names += [["failing", r, n.name, n.count] for r, n in enumerate(d.top_failing, start=1)]
        if names:
            out["n"] = names
    if req.HasField("tcp"):
        t = req.tcp
        resets = t.resets_by_direction
        out["c"] = [
            t.attempts_unanswered_total,
            resets.get("rx", 0),
            resets.get("tx", 0),
            t.retransmits_total,
            t.zero_windows_total,
            t.malformed_total,
        ]
    hists = []
    for name, (summary, field) in fi.HISTOGRAMS.items():
        if req.HasField(summary):
            part = getattr(req, summary)
            if part.HasField(field):
                h = getattr(part, field)
                hists.append(
                    [
                        name,
                        json_floats(tuple(h.bounds_seconds)),
                        str(list(h.counts)),  # the same text as json.dumps for ints
                        h.sum_seconds,
                    ]
                )
    if hists:
        out["h"] = hists
    return _encode(out)


@functools.lru_cache(maxsize=64)
def json_floats(values: tuple[float, ...]) -> str:
    """JSON of a bound list; memoized, as a fleet sends the same few lists every heartbeat."""
    return json.dumps(list(values))

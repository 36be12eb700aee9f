"""Flows the LRU evicts after the agent read them: counted exactly, carried to the control plane.

A 1,024-entry table takes 512 flows, which the agent reads; then 3,000 new flows
push most of them out. The oracle is the kernel's own key walk of the table
after the traffic (never our reader): a first-round flow still in the table was
kept, one missing was evicted; a second-round flow missing was lost (created and
evicted before any read). The report then goes through the heartbeat mapping to
a real control plane, whose /metrics and SQLite row must show the same figures.
"""

from __future__ import annotations

import collections
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from scapy.layers.inet import IP, UDP

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.sinks.heartbeat_message import snapshot_to_request
from sennet.testing.controlplane import Served
from sennet.testing.netlab import VethPair
from sennet.testing.scrape import sample
from sennet.testing.telemetry import full_snapshot
from tests.datapath_harness import LOADERS, Running, running
from tests.flow_traffic import frame, names, send_settled, tracker

CAPACITY = 1024
FIRST, SECOND = 512, 3000  # flows the agent reads; new flows that push them out
OLD, NEW = 9, 10  # second octet of each round's source addresses


def _frames(subnet: int, n: int) -> list[bytes]:
    """`n` UDP flows from distinct sources 10.<subnet>.x.y, one frame each."""
    return [
        frame(
            IP(src=f"10.{subnet}.{i >> 8}.{i & 255}", dst="10.8.0.1") / UDP(sport=7, dport=9), 0, 0
        )
        for i in range(n)
    ]


def _held_by_round(dp: Running) -> collections.Counter[int]:
    """Entries in FLOWS per source subnet (the round), by the kernel's own key walk."""
    fd = dp.manager.loaded.map_fds[layout.MAP_FLOWS]  # type: ignore[union-attr]
    raw = b"".join(libbpf().keys(fd, layout.FLOW_KEY.itemsize))
    second_octet = layout.FLOW_KEY.offset("saddr") + 1
    return collections.Counter(raw[second_octet :: layout.FLOW_KEY.itemsize])


@pytest.mark.parametrize("loader", LOADERS)
def test_flows_evicted_after_a_read_are_counted_and_reach_the_control_plane_exactly(
    net: VethPair, pin_root: Path, shared: Served, loader: str
) -> None:
    with running(net, pin_root / "p", loader, flow_capacity=CAPACITY) as dp:
        t = tracker(dp)
        send_settled(net, _frames(OLD, FIRST))
        assert _held_by_round(dp) == {OLD: FIRST}  # nothing evicted yet: the table is half full
        first = t.read(names(dp))
        kernel = send_settled(net, _frames(NEW, SECOND))
        held = _held_by_round(dp)
        second = t.read(names(dp))
        assert t.untracked() == 0
    assert kernel.rx_packets == SECOND
    evicted, lost = FIRST - held[OLD], SECOND - held[NEW]
    assert evicted > 0 and lost > 0  # the traffic did overflow the table
    assert (first.active, first.created_total, first.lost_total, first.evicted_total) == (
        FIRST,
        FIRST,
        0,
        0,
    )
    assert (second.active, second.created_total, second.ended_total) == (
        held.total(),
        FIRST + SECOND,
        0,
    )
    assert (second.lost_total, second.evicted_total) == (lost, evicted)

    agent_id, token = shared.cp.register(shared.bootstrap)
    snap = replace(full_snapshot(), flows=second)
    assert shared.cp.heartbeat(token, snapshot_to_request(agent_id, snap, [], 0)) == (
        grpc.StatusCode.OK,
        "",
    )
    s = shared.cp.samples()
    got = {
        what: sample(s, f"sennet_flow_{what}", agent=agent_id)
        for what in ("active", "created_total", "ended_total", "lost_total", "evicted_total")
    }
    assert got == {
        "active": held.total(),
        "created_total": FIRST + SECOND,
        "ended_total": 0,
        "lost_total": lost,
        "evicted_total": evicted,
    }
    rows = shared.cp.query(
        "SELECT active, created_total, lost_total, evicted_total FROM flow_samples"
        " JOIN heartbeats USING (heartbeat_id) WHERE agent_id = ?",
        agent_id,
    )
    assert rows == [(held.total(), FIRST + SECOND, lost, evicted)]

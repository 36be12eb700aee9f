"""Heartbeats: cadence, enrolment state, and a control-plane outage that loses nothing."""

from __future__ import annotations

import itertools
import statistics

from conftest import INTERVAL_S
from sennet.testing.controlplane import ControlPlane
from sennet.testing.vm.appliance import Appliance
from sennet.testing.vm.guest import agent_id, counters, plus_rx, wait_counters
from sennet.testing.vm.traffic import mixed


def test_heartbeats_arrive_at_the_configured_interval(
    appliance: Appliance, control_plane: ControlPlane
) -> None:
    agent = agent_id(appliance.machine)
    control_plane.wait_until(
        "six heartbeats",
        lambda: (
            control_plane.scalar("SELECT count(*) FROM heartbeats WHERE agent_id = ?", agent) >= 6
        ),
        timeout=60,
    )
    times = [
        float(r[0])
        for r in control_plane.query(
            "SELECT received_at FROM heartbeats WHERE agent_id = ? "
            "ORDER BY received_at DESC LIMIT 6",
            agent,
        )
    ]
    gaps = [a - b for a, b in itertools.pairwise(times)]
    assert abs(statistics.median(gaps) - INTERVAL_S) < 0.5, gaps
    assert max(gaps) < INTERVAL_S * 2.5, gaps


def test_enrolment_left_a_private_agent_token_in_the_state_partition(
    appliance: Appliance,
) -> None:
    host = appliance.machine.host
    state = [
        m.split()
        for m in host.file("/proc/mounts").content_string.splitlines()
        if " /var/lib/sennet " in m
    ]
    assert state and state[0][2] == "ext4"
    mine = "/var/lib/sennet/agent"  # the dropped agent's own directory
    tokens = [f for f in host.check_output(f"ls {mine}").split() if "token" in f]
    assert tokens, host.check_output(f"ls -la {mine}")
    for name in tokens:
        assert host.file(f"{mine}/{name}").mode == 0o600


def test_counts_sent_during_a_control_plane_outage_arrive_afterwards(
    appliance: Appliance, control_plane: ControlPlane
) -> None:
    agent = agent_id(appliance.machine)
    before = counters(control_plane, agent)
    frames = mixed()
    control_plane.stop()
    try:
        appliance.tap.send(frames)
        appliance.machine.wait_for_console(r"event=heartbeat_failed\b", timeout=30)
    finally:
        control_plane.start()
    wait_counters(control_plane, agent, plus_rx(before, frames), timeout=60)

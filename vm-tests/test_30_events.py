"""Each hostile frame gives exactly the expected events, stored with the right fields."""

from __future__ import annotations

import time
from collections import Counter

from sennet.testing.controlplane import ControlPlane
from sennet.testing.vm.appliance import Appliance
from sennet.testing.vm.guest import agent_id, event_totals
from sennet.testing.vm.traffic import hostile, rx_len


def test_events_by_kind_and_their_stored_fields(
    appliance: Appliance, control_plane: ControlPlane
) -> None:
    agent = agent_id(appliance.machine)
    cases = hostile()
    before = event_totals(control_plane, agent)
    since_ns = time.time_ns()
    appliance.tap.send([c.frame for c in cases])
    wanted = Counter(c.kind for c in cases)
    expected = {k: before.get(k, 0.0) + wanted.get(k, 0) for k in set(before) | set(wanted)}
    last: dict[str, float] = {}

    def arrived() -> bool:
        nonlocal last
        last = event_totals(control_plane, agent)
        return {k: last.get(k, 0.0) for k in expected} == expected

    try:
        control_plane.wait_until("event totals", arrived, timeout=30)
    except TimeoutError:
        raise AssertionError(f"event totals {last}, expected {expected}") from None

    def stored() -> list[tuple[object, ...]]:
        return control_plane.query(
            "SELECT kind, src_addr, dst_addr, src_port, dst_port, pkt_len, direction "
            "FROM events WHERE agent_id = ? AND ts_unix_ns >= ? ORDER BY event_id",
            agent,
            since_ns - 5_000_000_000,
        )

    control_plane.wait_until("events stored", lambda: len(stored()) >= len(cases), timeout=30)
    rows = [r for r in stored() if r[0] in wanted]
    assert sorted(rows) == sorted(
        (c.kind, c.src, c.dst, c.sport, c.dport, rx_len(c.frame), "rx") for c in cases
    )

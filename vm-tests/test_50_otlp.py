"""The appliance exports over OTLP to a receiver on the host while it heartbeats the control
plane: the same exact counts reach both, and hostile frames arrive as log records."""

from __future__ import annotations

from typing import Any

import pytest
from sennet.testing.controlplane import ControlPlane
from sennet.testing.otlp_receiver import OtlpReceiver, attributes
from sennet.testing.vm.appliance import Appliance
from sennet.testing.vm.guest import agent_id, counters, nic_counters, plus_rx, reported
from sennet.testing.vm.traffic import hostile, mixed


@pytest.fixture(scope="module")
def agent(appliance: Appliance, control_plane: ControlPlane) -> str:
    ident = agent_id(appliance.machine)
    control_plane.wait_until("a heartbeat from the guest", lambda: reported(control_plane, ident))
    return ident


def otlp_rx(rx: OtlpReceiver, agent: str) -> tuple[float, float] | None:
    """(packets, bytes) received on eth1 in the newest export of this agent, if any."""
    for arrival in reversed(rx.accepted("metrics")):
        resource = arrival.request.resource_metrics[0].resource  # type: ignore[union-attr]
        if attributes(resource.attributes).get("host.id") == agent:
            break
    else:
        return None
    attrs = {"network.interface.name": "eth1", "network.io.direction": "receive"}
    packets = rx.value("sennet.interface.packets", **attrs)
    octets = rx.value("sennet.interface.bytes", **attrs)
    return None if packets is None or octets is None else (float(packets), float(octets))


def test_the_appliance_exports_over_otlp_the_counts_the_control_plane_and_the_nic_have(
    appliance: Appliance, control_plane: ControlPlane, otlp_receiver: OtlpReceiver, agent: str
) -> None:
    before, nic_before = counters(control_plane, agent), nic_counters(appliance.machine)
    frames = mixed()
    appliance.tap.send(frames)
    want = plus_rx(before, frames)
    got: dict[str, Any] = {}

    def agreed() -> bool:
        got["cp"] = counters(control_plane, agent)
        got["otlp"] = otlp_rx(otlp_receiver, agent)
        return bool(got["cp"] == want and got["otlp"] == (want["rx_packets"], want["rx_bytes"]))

    try:
        control_plane.wait_until("OTLP and control plane totals", agreed, timeout=30)
    except TimeoutError:
        raise AssertionError(f"{got}, expected {want}") from None
    nic = nic_counters(appliance.machine)
    assert (
        nic["rx_packets"] - nic_before["rx_packets"],
        nic["rx_bytes"] - nic_before["rx_bytes"],
    ) == (
        len(frames),
        want["rx_bytes"] - before["rx_bytes"],
    )


def test_hostile_frames_arrive_as_otlp_log_records_field_by_field(
    appliance: Appliance, otlp_receiver: OtlpReceiver, agent: str
) -> None:
    cases = hostile()
    seen = len(events(otlp_receiver))
    appliance.tap.send([c.frame for c in cases])
    otlp_receiver.wait_until(
        "event records", lambda: len(events(otlp_receiver)) >= seen + len(cases), timeout=30
    )
    got = sorted(
        (r["kind"], r.get("source.address", ""), r.get("destination.address", ""),
         r["source.port"], r["destination.port"], r["sennet.packet.length"],
         r["network.io.direction"], r["network.interface.name"])
        for r in events(otlp_receiver)[seen:]
    )  # fmt: skip
    assert got == sorted(
        (c.kind, c.src, c.dst, c.sport, c.dport, len(c.frame), "receive", "eth1") for c in cases
    )


def events(rx: OtlpReceiver) -> list[dict[str, Any]]:
    return [
        {"kind": r.body.string_value, **attributes(r.attributes)}
        for r in rx.log_records()
        if r.event_name.startswith("sennet.event.")
    ]

"""The appliance boots, enrols and attaches: checked from outside and from inside."""

from __future__ import annotations

from harness.appliance import Appliance
from harness.controlplane import ControlPlane


def test_console_shows_the_agent_attached_to_the_monitored_nic(
    appliance: Appliance,
) -> None:
    console = appliance.machine.console()
    assert "event=attached ifname=eth1" in console
    assert "event=agent_ready" in console


def test_agent_enrolled_with_the_control_plane(
    appliance: Appliance, control_plane: ControlPlane
) -> None:
    control_plane.wait_until(
        "one agent enrolled",
        lambda: control_plane.query("SELECT count(*) FROM agents") == [(1,)],
    )

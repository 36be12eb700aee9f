"""The appliance boots, enrols and attaches: checked from outside and from inside."""

from __future__ import annotations

import re

from sennet.testing.controlplane import ControlPlane
from sennet.testing.vm.appliance import Appliance

# each verified layer (root, then agent) reports verity_opened before anything is mounted
INITRAMFS_PHASES = (
    "start",
    "modules_loaded",
    "partitions_found",
    "verity_opened",
    "verity_opened",
    "root_mounted",
)


def test_first_boot_attaches_only_the_monitored_nic_cleanly_in_order(
    appliance: Appliance,
) -> None:
    """Up to the agent's ready line: the boot phases in order, the programs on eth1 (the
    monitored NIC) and never on eth0 (management: heartbeats must not count themselves),
    and not one warning or error on the way."""
    console = appliance.machine.console()
    boot = console[: console.index("event=agent_ready")]
    phases = re.findall(r"sennet-initramfs: event=(\w+)", boot)
    assert phases == list(INITRAMFS_PHASES), phases
    assert re.findall(r"event=attached ifname=(\S+)", boot) == ["eth1"]
    ready = re.search(r"event=agent_ready .*", console)
    assert ready is not None and " interfaces=eth1 " in ready.group(0), ready
    complaints = [line for line in boot.splitlines() if re.search(r"level=(warning|error)", line)]
    assert complaints == []


def test_agent_enrolled_with_the_control_plane(
    appliance: Appliance, control_plane: ControlPlane
) -> None:
    control_plane.wait_until(
        "one agent enrolled",
        lambda: control_plane.query("SELECT count(*) FROM agents") == [(1,)],
    )

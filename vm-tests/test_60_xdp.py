"""XDP mode on the appliance: the 6.1 kernel's verifier takes sennet_xdp, virtio-net gets
it (native, or generic where the driver refuses, and the log says which), and the same
frames reach the control plane as exact counts; back on TC afterwards, nothing of the XDP
run is left on the NIC.

Disruptive: it restarts the agent twice with a provisioned agent.toml (root's, so the
supervisor reads it) that differs from the image's only in `attach = "xdp"`.
"""

from __future__ import annotations

import re

import pytest
from sennet.testing.controlplane import ControlPlane
from sennet.testing.vm.appliance import Appliance
from sennet.testing.vm.guest import (
    agent_id,
    agent_process,
    counters,
    plus_rx,
    wait_counters,
    xdp_mode,
)
from sennet.testing.vm.traffic import mixed

PROVISIONED = "/var/lib/sennet/etc/agent.toml"


def restart_agent(appliance: Appliance) -> str:
    """Kill the agent, wait for the supervisor's next one to be ready; its console part."""
    machine = appliance.machine
    ready_before = machine.console().count("event=agent_ready")
    machine.succeed(f"kill -9 {agent_process(machine)[0]}")
    machine.wait_for_console(r"(?s)" + r"event=agent_ready.*" * (ready_before + 1), timeout=120)
    return machine.console().rsplit("event=agent_start ", 1)[1]


def rx_hook(console: str) -> str:
    found = re.findall(r"event=attached ifname=eth1 .*?rx_hook=(\S+)", console)
    assert found, console[-2000:]
    return str(found[-1])


@pytest.mark.disruptive
def test_attach_xdp_on_the_appliance_counts_exactly_and_switching_back_leaves_no_xdp(
    disruptable: Appliance, control_plane: ControlPlane
) -> None:
    appliance = disruptable
    machine = appliance.machine
    agent = agent_id(machine)
    machine.succeed(
        f"mkdir -p /var/lib/sennet/etc && cp /etc/sennet/agent.toml {PROVISIONED} && "
        f"echo 'attach = \"xdp\"' >> {PROVISIONED} && chmod 0600 {PROVISIONED}"
    )
    try:
        console = restart_agent(appliance)
        hook = rx_hook(console)
        assert hook in ("xdp-native", "xdp-generic")
        # Native refused is logged, never silent.
        assert (hook == "xdp-generic") == ("event=xdp_mode_refused" in console)
        assert xdp_mode(machine, "eth1") == ("xdpgeneric" if hook == "xdp-generic" else "xdp")
        before = counters(control_plane, agent)
        frames = mixed()
        appliance.tap.send(frames)
        wait_counters(control_plane, agent, plus_rx(before, frames), timeout=60)
        print(f"virtio-net under QEMU: {hook}")
    finally:
        machine.succeed(f"rm -f {PROVISIONED}")
        console = restart_agent(appliance)
    assert rx_hook(console) == "tc"
    assert xdp_mode(machine, "eth1") is None

"""Faults: a killed agent is restarted and continues its counters; a reboot keeps the identity
and counts from before the agent starts (the boot-time loader follows the agent's plan).

These disturb the shared VM: they are marked disruptive (run after every other
test, the VM settled again afterwards), so no test depends on file order.
"""

from __future__ import annotations

import json
import re

import pytest
from sennet.testing.controlplane import ControlPlane
from sennet.testing.vm.appliance import Appliance
from sennet.testing.vm.guest import (
    PY,
    agent_id,
    agent_process,
    counters,
    nic_counters,
    plus_rx,
    wait_counters,
)
from sennet.testing.vm.traffic import mixed


def agent_pid(appliance: Appliance) -> int:
    return agent_process(appliance.machine)[0]


@pytest.mark.disruptive
def test_killed_agent_is_restarted_and_counters_continue(
    disruptable: Appliance, control_plane: ControlPlane
) -> None:
    appliance = disruptable
    agent = agent_id(appliance.machine)
    old = agent_pid(appliance)
    ready_before = appliance.machine.console().count("event=agent_ready")
    appliance.machine.succeed(f"kill -9 {old}")
    appliance.machine.wait_for_console(
        r"(?s)" + r"event=agent_ready.*" * (ready_before + 1), timeout=120
    )
    assert agent_pid(appliance) != old
    before = counters(control_plane, agent)
    frames = mixed()
    appliance.tap.send(frames)
    wait_counters(control_plane, agent, plus_rx(before, frames), timeout=60)
    resets = control_plane.query("SELECT resets FROM agents WHERE agent_id = ?", agent)
    assert resets == [(0,)], "pinned maps: a restarted agent continues, nothing went backwards"


def pinned_rx(appliance: Appliance) -> tuple[float, float]:
    """eth1's receive counters in the pinned maps, read in the guest (`sennet-agent status`)."""
    out = appliance.machine.succeed(
        f"{PY} -m sennet.agent.cli status --json --config /etc/sennet/agent.toml"
    )
    (iface,) = json.loads(out)["interfaces"]
    return float(iface["rx_packets"]), float(iface["rx_bytes"])


def kernel_rx(appliance: Appliance) -> tuple[float, float]:
    nic = nic_counters(appliance.machine)
    return nic["rx_packets"], nic["rx_bytes"]


def uptime_of(console: str, pattern: str) -> float:
    found = re.search(pattern + r"[^\n]*?\buptime=(\d+\.\d+)", console)
    assert found is not None, pattern
    return float(found.group(1))


@pytest.mark.disruptive
def test_a_reboot_keeps_the_identity_and_counts_from_before_the_agent_starts(
    disruptable: Appliance, control_plane: ControlPlane
) -> None:
    """The agent wrote its plan at its first start; at the reboot rc.boot's boot-time loader
    attaches before Python starts and before eth1 comes up, and the agent adopts it: the
    pinned counters equal what the guest's kernel counted on eth1 since power-on."""
    appliance = disruptable
    before = agent_id(appliance.machine)
    appliance.machine.succeed("test -f /var/lib/sennet/early-attach.plan")
    appliance.machine.reboot()
    appliance.machine.wait_for_console(r"event=agent_ready", timeout=180)
    appliance.machine.wait_for_ssh()
    console = appliance.machine.console()
    early = r"sennet-early-attach: event=early_counting interfaces=eth1 "
    assert uptime_of(console, early) < uptime_of(console, r"sennet-supervisor: event=agent_start ")
    # eth1 came up after the programs were on it: no frame arrived before them
    assert console.index(early) < console.index("sennet-init: event=link_up ifname=eth1 ")
    assert "event=bpf_adopted" in console and "event=early_attach_discarded" not in console
    frames = mixed()
    appliance.tap.send(frames)
    want = len(frames)
    # The oracle: the guest kernel's own eth1 counters since power-on (read until quiet).
    control_plane.wait_until(
        "the pinned eth1 counters equal the kernel's since boot",
        lambda: kernel_rx(appliance)[0] >= want and pinned_rx(appliance) == kernel_rx(appliance),
        timeout=60,
    )
    assert agent_id(appliance.machine) == before
    assert "first_boot=1" not in appliance.machine.console()
    control_plane.wait_until(
        "a heartbeat after the reboot",
        lambda: (
            control_plane.scalar(
                "SELECT count(*) FROM heartbeats WHERE agent_id = ? AND uptime_seconds < 60", before
            )
            > 0
        ),
        timeout=60,
    )
    assert control_plane.query("SELECT count(*) FROM agents") == [(1,)]


@pytest.mark.disruptive
def test_lost_ingress_filter_is_reattached_by_the_unprivileged_agent(
    disruptable: Appliance, control_plane: ControlPlane
) -> None:
    # The agent runs as its own user with CAP_NET_ADMIN only: re-adding a TC filter (and
    # moving the interface's counter slot) must work with that alone on the guest's kernel.
    appliance = disruptable
    agent = agent_id(appliance.machine)
    pid = agent_pid(appliance)
    reattached_before = appliance.machine.console().count("event=reattached")
    appliance.machine.succeed("/opt/sennet-test/tools/tc filter del dev eth1 ingress")
    appliance.machine.wait_for_console(
        r"(?s)" + r"event=reattached ifname=eth1.*" * (reattached_before + 1), timeout=60
    )
    assert agent_pid(appliance) == pid, "re-attached by the running agent, not a restart"
    before = counters(control_plane, agent)
    frames = mixed()
    appliance.tap.send(frames)
    wait_counters(control_plane, agent, plus_rx(before, frames), timeout=60)


@pytest.mark.disruptive
def test_a_provisioned_config_the_agent_could_have_written_is_not_read_by_root(
    disruptable: Appliance,
) -> None:
    """The dropped agent owns the state directory; a configuration there that root does not
    own (as a compromised agent could leave) is refused at the next start, and the agent
    comes back on the image's own configuration."""
    appliance = disruptable
    machine = appliance.machine
    machine.succeed(
        "mkdir -p /var/lib/sennet/etc && "
        'printf \'interfaces = ["eth1"]\\nbpf_dir = "/tmp/evil"\\n\' '
        "> /var/lib/sennet/etc/agent.toml && chown 990:990 /var/lib/sennet/etc/agent.toml"
    )
    try:
        ready_before = machine.console().count("event=agent_ready")
        machine.succeed(f"kill -9 {agent_pid(appliance)}")
        machine.wait_for_console(r"(?s)" + r"event=agent_ready.*" * (ready_before + 1), timeout=120)
        console = machine.console()
        assert (
            "event=provisioned_config_refused path=/var/lib/sennet/etc/agent.toml "
            "why=not_root_owned" in console
        )
        assert console.rsplit("event=agent_start ", 1)[1].startswith(
            "config=/etc/sennet/agent.toml"
        )
    finally:
        machine.succeed("rm -f /var/lib/sennet/etc/agent.toml")

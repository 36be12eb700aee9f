"""Facts about the agent inside a running appliance, read over SSH."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sennet.testing.controlplane import ControlPlane
from sennet.testing.errors import TestFailed
from sennet.testing.scrape import matching, sample
from sennet.testing.vm.machine import Machine
from sennet.testing.vm.traffic import rx_len

PY = "python3"


def agent_id(machine: Machine) -> str:
    data = json.loads(machine.succeed("cat /var/lib/sennet/identity.json"))
    return str(data["agent_id"])


def counters(cp: ControlPlane, agent: str, ifname: str = "eth1") -> dict[str, float]:
    """The control plane's packet and byte totals for one interface (0 before any heartbeat)."""
    samples = cp.samples()
    out = {}
    for metric, short in (
        ("sennet_interface_packets_total", "packets"),
        ("sennet_interface_bytes_total", "bytes"),
    ):
        for direction in ("rx", "tx"):
            value = sample(samples, metric, agent=agent, interface=ifname, direction=direction)
            out[f"{direction}_{short}"] = value or 0.0
    return out


def plus_rx(before: dict[str, float], frames: Sequence[bytes]) -> dict[str, float]:
    """The counters once `frames` have arrived on the monitored NIC (RX) on top of `before`."""
    return dict(
        before,
        rx_packets=before["rx_packets"] + len(frames),
        rx_bytes=before["rx_bytes"] + sum(rx_len(f) for f in frames),
    )


def nic_counters(machine: Machine, ifname: str = "eth1") -> dict[str, float]:
    """The guest kernel's own counters of a NIC (what virtio-net counted), the oracle the
    agent's counters must equal."""
    names = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
    out = machine.succeed(
        "cat " + " ".join(f"/sys/class/net/{ifname}/statistics/{n}" for n in names)
    )
    return dict(zip(names, map(float, out.split()), strict=True))


def wait_counters(
    cp: ControlPlane, agent: str, expected: dict[str, float], timeout: float = 30
) -> None:
    """Until the control plane shows exactly `expected`; the failure names what it showed."""
    last: dict[str, float] = {}

    def done() -> bool:
        nonlocal last
        last = counters(cp, agent)
        return last == expected

    try:
        cp.wait_until(f"counters == {expected}", done, timeout=timeout)
    except TestFailed:
        raise TestFailed(f"control plane shows {last}, expected {expected}") from None


def reported(cp: ControlPlane, agent: str, ifname: str = "eth1") -> bool:
    """True once a heartbeat carrying this interface's counters has been stored."""
    return (
        sample(cp.samples(), "sennet_interface_packets_total", agent=agent, interface=ifname,
               direction="rx") is not None
    )  # fmt: skip


def event_totals(cp: ControlPlane, agent: str) -> dict[str, float]:
    """Events by kind as the control plane exports them for this agent."""
    return {
        dict(labels)["kind"]: value
        for labels, value in matching(cp.samples(), "sennet_events_total", agent=agent).items()
    }


def processes(machine: Machine) -> list[tuple[int, int, str]]:
    """(pid, ppid, args) of every process (testinfra's process module needs a non-busybox ps)."""
    out = machine.succeed("ps -o pid,ppid,args")
    rows = []
    for line in out.splitlines()[1:]:
        pid, ppid, args = line.split(None, 2)
        rows.append((int(pid), int(ppid), args))
    return rows


def agent_process(machine: Machine) -> tuple[int, int, str]:
    agents = [p for p in processes(machine) if "sennet.agent" in p[2] and " run" in p[2]]
    assert len(agents) == 1, agents
    return agents[0]


# iproute2 in the test layer (the production root has none): wrappers that find its libraries.
TOOLS = "/opt/sennet-test/tools"
# IFLA_XDP_ATTACHED as `ip -j` reports it (mode), by the name `ip link` prints for it.
XDP_MODES = {1: "xdp", 2: "xdpgeneric", 3: "xdpoffload"}


def guest_json(machine: Machine, command: str) -> list[dict[str, Any]]:
    """The JSON an iproute2 command (`ip -j ...`, `tc -j ...`) prints in the guest."""
    out = machine.succeed(f"{TOOLS}/{command}").strip()
    rows: list[dict[str, Any]] = json.loads(out) if out else []
    return rows


def tc_state(machine: Machine, ifname: str) -> tuple[list[str], dict[str, list[str]]]:
    """The qdisc kinds on `ifname`, and the BPF filter names on its ingress and egress hooks
    (the guest kernel's view, through iproute2's tc)."""
    kinds = [q["kind"] for q in guest_json(machine, f"tc -j qdisc show dev {ifname}")]
    filters = {
        hook: sorted(
            f["options"]["bpf_name"]
            for f in guest_json(machine, f"tc -j filter show dev {ifname} {hook}")
            if f.get("kind") == "bpf" and "options" in f
        )
        for hook in ("ingress", "egress")
    }
    return kinds, filters


def xdp_mode(machine: Machine, ifname: str) -> str | None:
    """How an XDP program is attached to `ifname` ("xdp", "xdpgeneric"), None if none is."""
    (link,) = guest_json(machine, f"ip -j link show dev {ifname}")
    xdp = link.get("xdp")
    return XDP_MODES[int(xdp["mode"])] if xdp else None

"""Facts about the agent inside a running appliance, read over SSH."""

from __future__ import annotations

import json
import shlex

from harness.controlplane import ControlPlane
from harness.machine import Machine

PY = "python3"


def agent_id(machine: Machine) -> str:
    data = json.loads(machine.succeed("cat /var/lib/sennet/identity.json"))
    return str(data["agent_id"])


def series(cp: ControlPlane, agent: str, metric: str, **labels: str) -> str:
    """The exposition-format series name as the control plane writes it."""
    parts = [f'agent="{agent}"'] + [f'{k}="{v}"' for k, v in labels.items()]
    return f"{metric}{{{','.join(parts)}}}"


def counters(cp: ControlPlane, agent: str, ifname: str = "eth1") -> dict[str, float]:
    m = cp.metrics()
    out = {}
    for metric, short in (
        ("sennet_interface_packets_total", "packets"),
        ("sennet_interface_bytes_total", "bytes"),
    ):
        for direction in ("rx", "tx"):
            out[f"{direction}_{short}"] = m.get(
                series(cp, agent, metric, interface=ifname, direction=direction), 0.0
            )
    return out


def event_totals(cp: ControlPlane, agent: str) -> dict[str, float]:
    prefix = f'sennet_events_total{{agent="{agent}",kind="'
    return {k[len(prefix) : -2]: v for k, v in cp.metrics().items() if k.startswith(prefix)}


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


def pyroute2(machine: Machine, code: str) -> str:
    """Run a pyroute2 snippet in the guest (busybox has no tc; the agent's Python has pyroute2)."""
    return machine.succeed(
        f"{PY} -c " + shlex.quote("from pyroute2 import IPRoute; ipr = IPRoute(); " + code)
    )

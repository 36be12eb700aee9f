"""The fleet side of updates inside the appliance: `doctor`, and what the agent reports.

`sennet-agent doctor` runs in the booted test image as root (over SSH) and every check
passes: the pinned 6.1 kernel has BTF, rc.boot mounted bpffs, the kernel creates the
ring buffer and loads the program, clsact works in a private namespace, the clock is
QEMU's (the host's) and the state partition has room.
"""

from __future__ import annotations

import json

from sennet.testing.vm.appliance import Appliance

CHECKS = [
    "kernel_btf",
    "bpffs",
    "bpf_ringbuf",
    "bpf_program",
    "clsact",
    "capabilities",
    "clock",
    "state_space",
]


def test_doctor_passes_every_check_inside_the_appliance(appliance: Appliance) -> None:
    out = appliance.machine.succeed(
        "python3 -m sennet.agent.cli doctor --json --config /etc/sennet/agent.toml"
    )
    doc = json.loads(out)
    assert [(c["check"], c["ok"]) for c in doc["checks"]] == [(c, True) for c in CHECKS], doc
    assert doc["ok"] is True
    metrics = appliance.machine.succeed(
        "python3 -m sennet.agent.cli doctor --metrics --config /etc/sennet/agent.toml"
    )
    for check in CHECKS:
        assert f'sennet_agent_doctor_check{{check="{check}"}} 1.0' in metrics

"""Secure Boot enforced in OVMF: the kernel is locked down and the data plane still works.

A second VM (the test variant's signed UKI from its disk, OVMF's secboot firmware with the
snakeoil keys enrolled), provisioned only through the ESP because the signed command line
is fixed. Under lockdown the agent must still load its BPF objects, attach its TC filters
and count: the same traffic and control-plane counter check as test_20_traffic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import INTERVAL_S, host_control_plane, settle
from sennet.testing.controlplane import ControlPlane
from sennet.testing.vm.appliance import Appliance, booted
from sennet.testing.vm.guest import agent_id, counters, plus_rx, reported, wait_counters
from sennet.testing.vm.traffic import mixed


@pytest.fixture(scope="module")
def own_cp(workdir: Path) -> Iterator[ControlPlane]:
    """A control plane of this module's own: this VM must not join the shared one's fleet
    (the provisioning and fault tests count its agents)."""
    with host_control_plane(workdir, "secure-boot-cp") as cp:
        yield cp


@pytest.fixture(scope="module")
def secure_vm(workdir: Path, ssh_key: Path, own_cp: ControlPlane) -> Iterator[Appliance]:
    control_plane = own_cp
    toml = (
        'interfaces = ["eth1"]\n'
        'bpf_dir = "/opt/sennet/bpf"\n'
        f'control_plane = "10.0.2.2:{control_plane.grpc_port}"\n'
        f'bootstrap_token = "{control_plane.token}"\n'
        f"interval_s = {INTERVAL_S}\n"
    )
    with booted(
        "sb1",
        workdir,
        ssh_key,
        {},
        esp_files={"agent.toml": toml.encode()},
        secure_boot=True,
    ) as vm:
        settle(vm)
        yield vm


def test_secure_boot_is_on_and_the_kernel_is_locked_down(secure_vm: Appliance) -> None:
    m = secure_vm.machine
    assert "Secure boot enabled" in m.succeed("dmesg | grep -i 'secure boot' || true")
    # the appliance does not mount securityfs itself; the test does, to read the mode
    m.succeed("mount -t securityfs securityfs /sys/kernel/security")
    assert m.succeed("cat /sys/kernel/security/lockdown").strip() == (
        "none [integrity] confidentiality"
    )
    mounts = m.succeed("cat /proc/mounts")
    assert "/dev/mapper/sennet-root / squashfs ro" in mounts
    assert "/dev/mapper/sennet-agent /opt/sennet squashfs ro" in mounts


def test_under_lockdown_the_bpf_programs_attach_and_count(
    secure_vm: Appliance, own_cp: ControlPlane
) -> None:
    control_plane = own_cp
    filters = secure_vm.machine.succeed("/opt/sennet-test/tools/tc filter show dev eth1 ingress")
    assert "bpf" in filters and "direct-action" in filters
    ident = agent_id(secure_vm.machine)
    control_plane.wait_until("a heartbeat from the guest", lambda: reported(control_plane, ident))
    before = counters(control_plane, ident)
    frames = mixed()
    secure_vm.tap.send(frames)
    wait_counters(control_plane, ident, plus_rx(before, frames))
    after = counters(control_plane, ident)
    assert after["rx_packets"] - before["rx_packets"] == len(frames)

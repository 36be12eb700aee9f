"""The same image, two provisioning configs, two control planes; and the production variant."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import host_control_plane, provisioning
from sennet.testing.controlplane import ControlPlane
from sennet.testing.vm.appliance import booted, image_dir
from sennet.testing.vm.guest import agent_id


@pytest.fixture
def second_control_plane(workdir: Path) -> Iterator[ControlPlane]:
    with host_control_plane(workdir, "cp2") as cp:
        yield cp


def test_same_image_reports_where_its_provisioning_says(
    workdir: Path,
    ssh_key: Path,
    control_plane: ControlPlane,
    second_control_plane: ControlPlane,
) -> None:
    with booted("vm2", workdir, ssh_key, provisioning(second_control_plane)) as vm2:
        vm2.machine.wait_for_ssh()
        ident = agent_id(vm2.machine)
        second_control_plane.wait_until(
            "vm2 enrolled at cp2",
            lambda: second_control_plane.query("SELECT agent_id FROM agents") == [(ident,)],
        )
    assert (ident,) not in control_plane.query("SELECT agent_id FROM agents")


def partitions(disk: Path) -> list[str]:
    out = subprocess.run(
        ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
    )
    return [p.get("name", "") for p in json.loads(out.stdout)["partitiontable"]["partitions"]]


def test_production_image_has_no_shell_server() -> None:
    images = image_dir()
    prod, test = (
        partitions(images / "appliance.raw"),
        partitions(images / "appliance-test.raw"),
    )
    assert "sennet-test" not in prod and "sennet-test" in test
    files = (images / "root.files").read_text().splitlines()
    servers = [
        f for f in files if any(s in f.rsplit("/", 1)[-1] for s in ("dropbear", "sshd", "telnetd"))
    ]
    assert servers == []
    compilers = [
        f
        for f in files
        if f.rsplit("/", 1)[-1] in ("gcc", "cc", "clang", "apt", "apt-get", "dpkg", "pip")
    ]
    assert compilers == []

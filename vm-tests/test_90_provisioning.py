"""The same image, two provisioning configs, two control planes; and the production variant:
it runs only its own partitions, reads provisioning as data, and keeps the token out of sight."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import host_control_plane, provisioning
from sennet.testing.controlplane import ControlPlane
from sennet.testing.vm.appliance import Appliance, booted, image_dir
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


def test_the_bootstrap_token_is_gone_from_proc_cmdline_yet_the_agent_enrolled(
    appliance: Appliance, control_plane: ControlPlane
) -> None:
    ident = agent_id(appliance.machine)
    control_plane.wait_until(
        "vm1 enrolled",
        lambda: control_plane.query("SELECT agent_id FROM agents") == [(ident,)],
    )
    cmdline = appliance.machine.succeed("cat /proc/cmdline")
    assert control_plane.token not in cmdline
    assert "sennet.bootstrap_token" not in cmdline
    # the rest of the command line is still there, as booted
    assert f"sennet.control_plane=10.0.2.2:{control_plane.grpc_port}" in cmdline
    assert appliance.machine.succeed("stat -c %a /run/sennet/agent.env").strip() == "600"
    assert control_plane.token not in appliance.machine.console()


# Run as the agent's user (as the dropped agent would): read the kernel log both ways a
# process can, klogctl (busybox dmesg) and /dev/kmsg; print what each gave or its error.
AS_AGENT_READ_KERNEL_LOG = """
import os, pwd, subprocess
user = pwd.getpwnam("sennet-agent")
os.setgroups([])
os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
run = subprocess.run(["dmesg"], capture_output=True, text=True)
print(f"dmesg exit={run.returncode} uid={os.getuid()}")
print(run.stdout, run.stderr)
try:
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    print("kmsg", os.read(fd, 8192))
except OSError as exc:
    print(f"kmsg refused: {exc.strerror}")
"""


def test_the_kernel_log_which_holds_the_token_is_closed_to_the_agent_user(
    appliance: Appliance, control_plane: ControlPlane
) -> None:
    # The oracle that this matters: root's kernel log still holds the booted command line.
    assert control_plane.token in appliance.machine.succeed("dmesg")
    assert appliance.machine.succeed("cat /proc/sys/kernel/dmesg_restrict").strip() == "1"
    # Set by the image itself, before the agent first starts, whatever the kernel's default
    # (Debian's is CONFIG_SECURITY_DMESG_RESTRICT=y today; another kernel's may not be).
    console = appliance.machine.console()
    restricted = console.find("event=sysctl key=kernel.dmesg_restrict value=1")
    assert 0 <= restricted < console.index("event=agent_start"), console[:4000]
    out = appliance.machine.succeed(f"python3 -c '{AS_AGENT_READ_KERNEL_LOG}'")
    assert control_plane.token not in out
    assert "sennet.bootstrap_token" not in out
    assert re.search(r"dmesg exit=[1-9]\d* uid=990\b", out), out
    assert "kmsg refused: Operation not permitted" in out, out


# Each hostile line would print a hostile_code_ran event to the console if a shell ran it.
HOSTILE_NETWORK_ENV = b"""SENNET_MGMT_IF=eth0
SENNET_DNS=10.0.2.3;echo sennet-hostile: event=hostile_code_ran how=semicolon >/dev/console
SENNET_GW=$(echo sennet-hostile: event=hostile_code_ran how=substitution >/dev/console)
echo sennet-hostile: event=hostile_code_ran how=bare_line >/dev/console
SENNET_EXTRA=1
"""
# Today's supervisor sourced these as shell: either would power the machine off.
HOSTILE_CMDLINE = ("sennet.tls_server_name=$(reboot)", "sennet.interval_s=;reboot", "sennet.x=1")


def test_production_boot_ignores_a_test_disk_and_runs_no_provisioning_as_code(
    workdir: Path,
) -> None:
    """The test image's disk (its dropbear partition named sennet-test) rides along as a
    second disk, the ESP carries a hostile network.env, the command line hostile values."""
    test_disk = image_dir() / "appliance-test.raw"
    with booted(
        "prod",
        workdir,
        None,
        {"control_plane": "10.0.2.2:9"},  # nothing listens: the agent is ready regardless
        variant="production",
        esp_files={"network.env": HOSTILE_NETWORK_ENV},
        extra_disks=[test_disk],
        extra_cmdline=HOSTILE_CMDLINE,
    ) as prod:
        console = prod.machine.wait_for_console(r"event=boot_done.*").string
        # Only the boot disk's own partitions (vda), none of the test disk's (vdb).
        opened = re.findall(r"event=verity_opened layer=(\w+) dev=(\S+)", console)
        assert opened == [("root", "/dev/vda2"), ("agent", "/dev/vda3")]
        mounted = re.search(r"event=root_mounted root=(\S+) agent=(\S+) test=(\S+)", console)
        assert mounted is not None
        assert mounted.groups() == ("/dev/mapper/sennet-root", "/dev/mapper/sennet-agent", "none")
        assert "sennet-init: event=esp_mounted dev=/dev/vda1" in console
        assert "sennet-init: event=state_mounted dev=/dev/vda6" in console
        # No test code ran: no test hook, no SSH server.
        assert "event=test_hook_started" not in console
        assert "event=ssh_started" not in console
        # Provisioning as data: the good line used, the rest logged (never run, never echoed).
        assert "hostile_code_ran" not in console
        assert "sennet-init: event=dhcp_started ifname=eth0" in console
        env = "source=esp:sennet/network.env"
        events = re.findall(r"event=provisioning_\w+ [^\r\n]*", console)
        assert events == [
            f"event=provisioning_rejected {env} line=2 key=dns why=invalid_value",
            f"event=provisioning_rejected {env} line=3 key=gw why=invalid_value",
            f"event=provisioning_rejected {env} line=4 key=(invalid) why=not_key_value",
            f"event=provisioning_unknown_key {env} line=5 key=SENNET_EXTRA",
            "event=provisioning_rejected source=cmdline key=tls_server_name why=invalid_value",
            "event=provisioning_rejected source=cmdline key=interval_s why=invalid_value",
            "event=provisioning_unknown_key source=cmdline key=x",
        ]
        # And the agent runs (booted() waited for its ready line), still up.
        assert prod.machine.running

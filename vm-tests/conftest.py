"""Fixtures: the control plane on the host, an SSH key, and one shared booted appliance.

Booting under TCG costs seconds, so one VM serves every test. Tests that kill
or reboot it are marked `disruptive`: collection moves them after all others
whatever the file order, and their `disruptable` fixture brings the VM back to
the state every test expects (agent ready, SSH up, eth1 MTU 9000) afterwards.
Every fixture tears down what it made, also on failure or Ctrl-C; the console
log of each VM is kept in the session's work directory and its tail printed
for a failed test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sennet.common import log as slog
from sennet.testing.controlplane import ControlPlane
from sennet.testing.otlp_receiver import OtlpReceiver
from sennet.testing.vm.appliance import Appliance, booted
from sennet.testing.vm.guest import agent_id

slog.setup("info")  # the harness logs key=value events, as the product does
INTERVAL_S = 2
DISPOSABLE = {".raw", ".qcow2", ".bundle", ".fd"}  # in the workdir, removed after the run


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("the VM tests need root (tap devices, network namespaces)")
    given = os.environ.get("SENNET_VM_WORKDIR")
    path = Path(given or tempfile.mkdtemp(prefix="sennet-vm-"))
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nvm-tests: logs in {path}")
    yield path
    if not given:
        # The logs stay to be read; the disks, firmware variables and bundles (about
        # 1.8 GB a run) go, or runs on one machine fill its disk.
        for entry in path.iterdir():
            if entry.is_dir() and entry.name == "bundles":
                shutil.rmtree(entry)
            elif entry.suffix in DISPOSABLE:
                entry.unlink()


@pytest.fixture(scope="session")
def ssh_key(workdir: Path) -> Path:
    key = workdir / "id_ed25519"
    if not key.exists():
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "vm-tests",
                "-f",
                str(key),
            ],
            check=True,
        )
    return key


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "disruptive: kills or reboots the shared VM; runs after every other test"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Disruptive tests last, in their own order, wherever their files sort."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@contextlib.contextmanager
def host_control_plane(workdir: Path, name: str) -> Iterator[ControlPlane]:
    """A control plane on the host's loopback with a fresh bootstrap token."""
    cp = ControlPlane(workdir / f"{name}.db", workdir, name=name)
    cp.create_token("vm-tests")
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def control_plane(workdir: Path) -> Iterator[ControlPlane]:
    with host_control_plane(workdir, "cp") as cp:
        yield cp


def provisioning(cp: ControlPlane, otlp: OtlpReceiver | None = None) -> dict[str, str]:
    settings = {
        "control_plane": f"10.0.2.2:{cp.grpc_port}",
        "bootstrap_token": cp.token,
        "interval_s": str(INTERVAL_S),
    }
    if otlp is not None:  # the host's loopback, as the guest reaches it
        settings["otlp_endpoints"] = f"grpc://10.0.2.2:{otlp.grpc_port}"
    return settings


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP receiver (official collector services) on the host's loopback."""
    with OtlpReceiver() as rx:
        yield rx


@pytest.fixture(scope="session")
def appliance(
    workdir: Path, ssh_key: Path, control_plane: ControlPlane, otlp_receiver: OtlpReceiver
) -> Iterator[Appliance]:
    with booted("vm1", workdir, ssh_key, provisioning(control_plane, otlp_receiver)) as vm:
        settle(vm)
        (workdir / "vm1.env").write_text(
            json.dumps(
                {
                    "workdir": str(workdir),
                    "db": str(control_plane.db),
                    "grpc_port": control_plane.grpc_port,
                    "http_port": control_plane.http_port,
                    "tap_netns": vm.tap.netns,
                    "tap_ifname": vm.tap.ifname,
                    "agent_id": agent_id(vm.machine),
                }
            )
        )
        yield vm


def settle(vm: Appliance) -> None:
    """The state every test of the shared VM starts from."""
    vm.machine.wait_for_ssh()
    # Large frames (events) need more than eth1's default 1500-byte MTU.
    vm.machine.succeed("ip link set eth1 mtu 9000")


@pytest.fixture
def disruptable(appliance: Appliance) -> Iterator[Appliance]:
    """The shared VM for a test that kills or reboots it; settled again afterwards."""
    yield appliance
    if not appliance.machine.running:
        appliance.machine.start()
    appliance.machine.wait_for_console(r"event=agent_ready", timeout=180)
    settle(appliance)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    if report.failed and "appliance" in funcargs:
        vm: Appliance = funcargs["appliance"]
        report.sections.append(("vm1 console (tail)", vm.machine.tail(60)))

"""Boot the built appliance (test variant) for a test: disk overlay, tap, cmdline."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sennet_image.qemu import DirectBoot, qemu_argv, tap_netdev

from sennet.testing.errors import HarnessError
from sennet.testing.netlab import Tap, tap
from sennet.testing.ports import free_port
from sennet.testing.vm import qemu
from sennet.testing.vm.machine import Machine, step

REPO = Path(__file__).resolve().parents[4]  # python/sennet/testing/vm/ -> the checkout
ARTEFACTS = ("vmlinuz", "initrd.img", "cmdline", "appliance-test.raw", "kernel-release")


def image_dir() -> Path:
    path = Path(os.environ.get("SENNET_IMAGE_DIR", REPO / "build" / "image"))
    missing = [a for a in ARTEFACTS if not (path / a).exists()]
    if missing:
        raise HarnessError(
            f"image artefacts missing in {path}: {', '.join(missing)} "
            "(build them: .venv/bin/python -m sennet_image build, from images/)"
        )
    return path


@dataclass
class Appliance:
    machine: Machine
    tap: Tap
    accel: str
    mon_mac: str = "52:54:00:00:00:02"


@contextlib.contextmanager
def booted(
    name: str,
    workdir: Path,
    ssh_key: Path,
    provisioning: dict[str, str],
) -> Iterator[Appliance]:
    """Boot a fresh copy-on-write disk of the test image; tear everything down on exit."""
    images = image_dir()
    overlay = workdir / f"{name}.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
         "-b", str(images / "appliance-test.raw"), str(overlay)],
        check=True,
    )  # fmt: skip
    pub = (ssh_key.with_suffix(".pub")).read_text().split()
    cmdline = (images / "cmdline").read_text().strip().split()
    cmdline += [f"sennet.{k}={v}" for k, v in provisioning.items()]
    cmdline += [f"sennet.ssh_key={pub[0]}:{pub[1]}"]
    accel = qemu.accelerator(images / "vmlinuz")
    stack = contextlib.ExitStack()
    monitored = stack.enter_context(tap())
    machine = None
    try:
        ssh_port = free_port()
        argv = qemu_argv(
            accel=accel,
            disk=overlay,
            boot=DirectBoot(
                kernel=images / "vmlinuz",
                initrd=images / "initrd.img",
                cmdline=" ".join(cmdline),
            ),
            memory_mib=768,
            smp=1,
            monitored_netdev=tap_netdev(monitored.fd),
            ssh_port=ssh_port,
            disk_cache="unsafe",  # a throwaway overlay: no flushes to wait for
            binary=qemu.qemu_binary(),
        )
        (workdir / f"{name}.qemu-argv").write_text(shlex.join(argv) + "\n")
        machine = Machine(name, argv, [monitored.fd], workdir, ssh_port, ssh_key)
        with step(f"{name}: boot ({accel})"):
            machine.start()
            machine.wait_for_console(r"event=agent_ready", timeout=180)
        yield Appliance(machine, monitored, accel)
    finally:
        if machine is not None:
            machine.crash()
        stack.close()

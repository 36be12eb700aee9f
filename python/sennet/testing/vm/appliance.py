"""Boot the built appliance for a test (test variant, or production): disk overlay, tap, cmdline."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sennet_image.qemu import (
    DirectBoot,
    UefiBoot,
    direct_boot,
    qemu_argv,
    tap_netdev,
    vars_template,
)

from sennet.testing.errors import HarnessError
from sennet.testing.netlab import Tap, tap
from sennet.testing.ports import free_port
from sennet.testing.vm import qemu
from sennet.testing.vm.machine import Machine, step

REPO = Path(__file__).resolve().parents[4]  # python/sennet/testing/vm/ -> the checkout
ARTEFACTS = (
    "vmlinuz",
    "vmlinux",
    "initrd.cpio",
    "initrd-test.cpio",
    "cmdline",
    "appliance.raw",
    "appliance-test.raw",
    "kernel-release",
)


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


def _disk(images: Path, workdir: Path, name: str, base: str, esp_files: dict[str, bytes]) -> Path:
    """A copy-on-write overlay of `base`; with `esp_files`, over a copy whose ESP holds them
    (as sennet/NAME, where an installer puts provisioning files)."""
    backing = images / base
    if esp_files:
        backing = workdir / f"{name}.base.raw"
        shutil.copyfile(images / base, backing)
        for file_name, data in sorted(esp_files.items()):
            src = workdir / f"{name}.esp.{file_name}"
            src.write_bytes(data)
            subprocess.run(
                ["mcopy", "-o", "-i", f"{backing}@@{1 << 20}", str(src), f"::/sennet/{file_name}"],
                check=True,
                env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
            )
    overlay = workdir / f"{name}.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
         "-b", str(backing), str(overlay)],
        check=True,
    )  # fmt: skip
    return overlay


@contextlib.contextmanager
def booted(
    name: str,
    workdir: Path,
    ssh_key: Path | None,
    provisioning: dict[str, str],
    *,
    variant: str = "test",
    esp_files: dict[str, bytes] | None = None,
    extra_disks: Sequence[Path] = (),
    extra_cmdline: Sequence[str] = (),
    secure_boot: bool = False,
) -> Iterator[Appliance]:
    """Boot a fresh copy-on-write disk of the image; tear everything down on exit.

    The test variant (SSH with `ssh_key`) by default; `variant="production"` boots the
    shipped image, which has no SSH: watch it through `machine.wait_for_console`.
    `extra_disks` are attached read-only after the boot disk; `extra_cmdline` words go
    after the `sennet.*` provisioning words. With `secure_boot` the firmware boots the disk's
    signed UKI under enforced Secure Boot; its command line is fixed (signed), so settings
    come only from `esp_files` (sennet/agent.toml) and the SSH key goes to the ESP.
    """
    images = image_dir()
    test = variant == "test"
    if test and ssh_key is None:
        raise HarnessError("the test variant needs an SSH key")
    if secure_boot and (provisioning or extra_cmdline):
        raise HarnessError("a Secure Boot boot takes no command line: provision by esp_files")
    esp_files = dict(esp_files or {})
    if secure_boot and test and ssh_key is not None:
        esp_files["authorized_keys"] = ssh_key.with_suffix(".pub").read_bytes()
    base = "appliance-test.raw" if test else "appliance.raw"
    overlay = _disk(images, workdir, name, base, esp_files)
    cmdline = (images / "cmdline").read_text().strip().split()
    cmdline += [f"sennet.{k}={v}" for k, v in provisioning.items()]
    if test and ssh_key is not None:
        pub = (ssh_key.with_suffix(".pub")).read_text().split()
        cmdline += [f"sennet.ssh_key={pub[0]}:{pub[1]}"]
    cmdline += extra_cmdline
    accel = qemu.accelerator(images / "vmlinuz")
    stack = contextlib.ExitStack()
    monitored = stack.enter_context(tap())
    machine = None
    try:
        ssh_port = free_port() if test else None
        how: DirectBoot | UefiBoot = direct_boot(images, " ".join(cmdline), test=test)
        if secure_boot:
            how = UefiBoot(vars_file=workdir / f"{name}.OVMF_VARS.fd", secure_boot=True)
            shutil.copyfile(vars_template(True), how.vars_file)
        argv = qemu_argv(
            accel=accel,
            disk=overlay,
            boot=how,
            memory_mib=768,
            smp=1,
            monitored_netdev=tap_netdev(monitored.fd),
            ssh_port=ssh_port,
            disk_cache="unsafe",  # a throwaway overlay: no flushes to wait for
            binary=qemu.qemu_binary(),
            extra_disks=extra_disks,
        )
        (workdir / f"{name}.qemu-argv").write_text(shlex.join(argv) + "\n")
        machine = Machine(name, argv, [monitored.fd], workdir, ssh_port, ssh_key if test else None)
        with step(f"{name}: boot ({accel})"):
            machine.start()
            # firmware (SMM, signature checks) costs minutes more under TCG
            machine.wait_for_console(r"event=agent_ready", timeout=480 if secure_boot else 180)
        yield Appliance(machine, monitored, accel)
    finally:
        if machine is not None:
            machine.crash()
        stack.close()

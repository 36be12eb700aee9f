"""Boot the flashed disk through OVMF and systemd-boot, as a machine in the field boots.

Direct kernel boot (appliance.booted) skips the firmware, the boot loader and the
per-slot UKIs; the update tests need all three: systemd-boot chooses the slot,
counts tries and renames entries on the ESP. The kernel command line is then the
UKI's, so provisioning comes from files on the ESP (`sennet/agent.toml`,
`sennet/authorized_keys`), as on a flashed box. The OVMF variable store is a
per-machine copy kept across restarts. QEMU runs with -no-reboot: a guest reboot
ends the process, and `restart` starts the same disk again, like a power cycle.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from sennet_image.qemu import OVMF_VARS, UefiBoot, qemu_argv, tap_netdev

from sennet.testing.netlab import tap
from sennet.testing.ports import free_port
from sennet.testing.vm import qemu
from sennet.testing.vm.appliance import Appliance, _disk, image_dir
from sennet.testing.vm.machine import Machine, step


@contextlib.contextmanager
def uefi_booted(
    name: str,
    workdir: Path,
    ssh_key: Path,
    esp_files: dict[str, bytes],
    ready: str = r"event=agent_ready",
    extra_argv: Sequence[str] = (),
) -> Iterator[Appliance]:
    """The test variant's disk booted by the firmware; torn down on exit. `extra_argv` is
    added to QEMU's (a USB controller, a QMP socket)."""
    images = image_dir()
    files = dict(esp_files)
    files["authorized_keys"] = ssh_key.with_suffix(".pub").read_bytes()
    overlay = _disk(images, workdir, name, "appliance-test.raw", files)
    vars_file = workdir / f"{name}.ovmf-vars.fd"
    shutil.copyfile(OVMF_VARS, vars_file)
    accel = qemu.accelerator(images / "vmlinuz")
    stack = contextlib.ExitStack()
    monitored = stack.enter_context(tap())
    machine = None
    ssh_port = free_port()
    try:
        argv = qemu_argv(
            accel=accel,
            disk=overlay,
            boot=UefiBoot(vars_file),
            memory_mib=768,
            smp=1,
            monitored_netdev=tap_netdev(monitored.fd),
            ssh_port=ssh_port,
            disk_cache="writeback",  # flushes honoured: the crash test needs what was synced
            binary=qemu.qemu_binary(),
        ) + list(extra_argv)
        (workdir / f"{name}.qemu-argv").write_text(shlex.join(argv) + "\n")
        machine = Machine(name, argv, [monitored.fd], workdir, ssh_port, ssh_key)
        with step(f"{name}: UEFI boot ({accel})"):
            machine.start()
            machine.wait_for_console(ready, timeout=300)
        yield Appliance(machine, monitored, accel)
    finally:
        if machine is not None:
            machine.crash()
        stack.close()

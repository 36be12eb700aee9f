"""The one QEMU command line for the appliance, and the one KVM-or-TCG decision.

`images/boot` (`sennet_image boot`), the VM test harness (sennet.testing.vm) and
with it the demo all start the appliance through `qemu_argv`, so a fix to how
the appliance is emulated (a NIC option, the CPU model) lands once. Callers pass
only what genuinely differs between them: memory, CPUs, disk cache mode, how the
management NIC forwards SSH, what backs the monitored NIC, direct or UEFI boot.

/dev/kvm existing proves nothing (on some hosts it is there but the CPU lacks
VT-x and a guest hangs at "Booting from ROM"), so KVM is chosen only when a
short probe sees the appliance kernel print its banner; otherwise TCG.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Secure Boot: Debian's SMM-protected firmware build, and a variable store with the snakeoil
# key (/usr/share/ovmf/PkKek-1-snakeoil.pem) enrolled as PK, KEK and db: it runs only EFI
# binaries that key signed (the build's default signing key, sennet_image.signing).
OVMF_CODE_SECBOOT = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS_SNAKEOIL = Path("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd")
MGMT_MAC = "52:54:00:00:00:01"
MONITORED_MAC = "52:54:00:00:00:02"
# Under TCG: Nehalem (x86-64-v2, the baseline the image is tested on) is cheaper to
# emulate than `-cpu max`, whose wider vector paths TCG runs slowly. Under KVM the
# host's own CPU costs nothing to expose.
TCG_CPU = "Nehalem"
KVM_CPU = "host"


@dataclass(frozen=True)
class DirectBoot:
    """Kernel and initramfs handed to QEMU (fast; the command line is ours to extend)."""

    kernel: Path
    initrd: Path
    cmdline: str


def direct_boot(image_dir: Path, cmdline: str, *, test: bool = False) -> DirectBoot:
    """A build's direct boot: the kernel's ELF (QEMU's PVH entry, no self-decompression)
    and the initramfs uncompressed (no xz unpack), the same content the UKIs carry packed.
    A build from before those files existed boots from its bzImage and xz initramfs, so an
    older image still boots (and benchmarks) as it did."""
    initrd = "initrd-test" if test else "initrd"
    kernel, cpio = image_dir / "vmlinux", image_dir / f"{initrd}.cpio"
    if not (kernel.is_file() and cpio.is_file()):
        kernel, cpio = image_dir / "vmlinuz", image_dir / f"{initrd}.img"
    return DirectBoot(kernel=kernel, initrd=cpio, cmdline=cmdline)


@dataclass(frozen=True)
class UefiBoot:
    """OVMF firmware boots the disk's ESP as a flashed machine would (q35 chipset).

    `vars_file` is a writable copy of the OVMF variable store, owned by the caller
    (`vars_template` says which). With `secure_boot`, the SMM firmware enforces
    signatures against the keys enrolled in that store.
    """

    vars_file: Path
    secure_boot: bool = False


def vars_template(secure_boot: bool) -> Path:
    """The variable store to copy for a UEFI boot: with the snakeoil keys for Secure Boot."""
    return OVMF_VARS_SNAKEOIL if secure_boot else OVMF_VARS


def cpu_model(accel: str) -> str:
    """The CPU model for an accelerator (see TCG_CPU for why not `max`)."""
    return KVM_CPU if accel == "kvm" else TCG_CPU


def tap_netdev(fd: int) -> str:
    """The monitored NIC's backend for a tap device the caller opened (fd passed to QEMU)."""
    return f"tap,fd={fd}"


def qemu_argv(
    *,
    accel: str,
    disk: Path,
    boot: DirectBoot | UefiBoot,
    memory_mib: int,
    smp: int,
    monitored_netdev: str,
    ssh_port: int | None = None,
    disk_cache: str | None = None,
    cpu: str | None = None,
    binary: str = QEMU,
    extra_disks: Sequence[Path] = (),
) -> list[str]:
    """The QEMU argv: virtio disk (qcow2), eth0 = management NIC, eth1 = monitored NIC.

    Management is user networking (the guest reaches the host's loopback at
    10.0.2.2, where a control plane listens; with `ssh_port` the guest's port 22
    is forwarded to 127.0.0.1:ssh_port). `monitored_netdev` is the backend of the
    monitored NIC without its id (e.g. `tap_netdev(fd)` or `user,restrict=on`).
    The disk comes first, then the NICs: PCI order makes the names stable.
    `extra_disks` (raw or qcow2, by suffix) are attached read-only after the NICs,
    as foreign disks a machine may carry.
    """
    drive = f"file={disk},if=virtio,format=qcow2"
    if disk_cache is not None:
        drive += f",cache={disk_cache}"
    mgmt = "user,id=mgmt"
    if ssh_port is not None:
        mgmt += f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
    argv = [
        binary,
        "-accel", accel,
        "-cpu", cpu or cpu_model(accel),
        "-m", str(memory_mib),
        "-smp", str(smp),
        "-nodefaults",
        "-display", "none",
        "-serial", "stdio",
        "-no-reboot",
        "-drive", drive,
        "-netdev", mgmt,
        "-device", f"virtio-net-pci,netdev=mgmt,mac={MGMT_MAC}",
        "-netdev", f"{monitored_netdev},id=mon",
        # ctrl_vlan=off: with it on, QEMU's VLAN filter drops tagged frames for VLANs the
        # guest never registered, and a monitored port must see every VLAN.
        "-device", f"virtio-net-pci,netdev=mon,mac={MONITORED_MAC},ctrl_vlan=off",
    ]  # fmt: skip
    for extra in extra_disks:
        fmt = "raw" if extra.suffix == ".raw" else "qcow2"
        argv += ["-drive", f"file={extra},if=virtio,format={fmt},readonly=on"]
    if isinstance(boot, DirectBoot):
        argv += ["-kernel", str(boot.kernel), "-initrd", str(boot.initrd), "-append", boot.cmdline]
    elif boot.secure_boot:
        argv += [
            "-machine", "q35,smm=on",
            "-global", "driver=cfi.pflash01,property=secure,value=on",
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE_SECBOOT}",
            "-drive", f"if=pflash,format=raw,file={boot.vars_file}",
        ]  # fmt: skip
    else:
        argv += [
            "-machine", "q35",
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={boot.vars_file}",
        ]  # fmt: skip
    return argv


def read_until(
    proc: subprocess.Popen[bytes],
    pattern: re.Pattern[str],
    timeout_s: float,
    *,
    echo: bool,
    sink: list[str] | None = None,
) -> str:
    """Collect the process's output until `pattern` matches a whole line, it exits, or
    time runs out; the KVM probe and `sennet_image boot` both watch the console this way."""
    assert proc.stdout is not None
    buf = ""
    deadline = time.monotonic() + timeout_s
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
        if not ready:
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        text = chunk.decode(errors="replace")
        if echo:
            sys.stdout.write(text)
            sys.stdout.flush()
        buf += text
        if sink is not None:
            sink.append(text)
        match = pattern.search(buf)
        if match and "\n" in buf[match.end() :]:  # the whole matching line, not half of it
            break
    return buf


def kvm_works(vmlinuz: Path, timeout_s: float = 4.0) -> bool:
    """True if QEMU with KVM prints the kernel banner within `timeout_s` (a real probe)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError:
        return False
    argv = [
        QEMU, "-accel", "kvm", "-nodefaults", "-display", "none", "-m", "256",
        "-serial", "stdio", "-no-reboot", "-kernel", str(vmlinuz),
        "-append", "console=ttyS0 panic=-1 earlyprintk=ttyS0",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        banner = re.compile(r"Linux version")
        return bool(banner.search(read_until(proc, banner, timeout_s, echo=False)))
    finally:
        proc.kill()
        proc.wait()


def accelerator(vmlinuz: Path, requested: str = "auto") -> str:
    """`requested` unless it is `auto`; then 'kvm' if the probe boots `vmlinuz`, else 'tcg'."""
    if requested != "auto":
        return requested
    return "kvm" if kvm_works(vmlinuz) else "tcg"

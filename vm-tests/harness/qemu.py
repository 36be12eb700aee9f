"""QEMU command lines, and the one decision that matters for speed: KVM or TCG.

/dev/kvm existing proves nothing (on some hosts it is there and a guest hangs at
"Booting from ROM"), so the choice is made by a probe: boot the appliance kernel
with KVM for a few seconds and look for the kernel's first console line. Only a
probe that sees it picks KVM; everything else falls back to TCG.
"""

from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path

from sennet.testing.errors import HarnessError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images"))
from sennet_image.boot import kvm_works  # one KVM probe for the whole repo

QEMU = "qemu-system-x86_64"


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise HarnessError(f"{QEMU} not found: apt-get install qemu-system-x86")
    return path


@functools.cache
def accelerator(kernel: Path) -> str:
    """'kvm' when a KVM guest demonstrably runs here, else 'tcg' (the image tooling's probe)."""
    return "kvm" if kvm_works(kernel) else "tcg"


def direct_boot_argv(
    *,
    kernel: Path,
    initrd: Path,
    cmdline: str,
    disk: Path,
    accel: str,
    ssh_port: int,
    tap_fd: int,
    memory_mib: int = 768,
) -> list[str]:
    """Two NICs: eth0 = management (user networking; host loopback is 10.0.2.2,
    guest SSH forwarded to 127.0.0.1:ssh_port), eth1 = monitored (the tap fd)."""
    cpu = ["-cpu", "host"] if accel == "kvm" else ["-cpu", "max"]
    return [
        qemu_binary(), "-accel", accel, *cpu, "-m", str(memory_mib), "-smp", "1",
        "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
        "-drive", f"file={disk},format=qcow2,if=virtio,cache=unsafe",
        "-netdev", f"user,id=mgmt,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", "virtio-net-pci,netdev=mgmt,mac=52:54:00:00:00:01",
        "-netdev", f"tap,id=mon,fd={tap_fd}",
        # ctrl_vlan=off: QEMU's VLAN filter would drop tagged frames for VLANs the
        # guest never registered, and a monitored port must see every VLAN.
        "-device", "virtio-net-pci,netdev=mon,mac=52:54:00:00:00:02,ctrl_vlan=off",
    ]  # fmt: skip

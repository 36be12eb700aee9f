"""The QEMU binary and the KVM-or-TCG choice for the harness.

The command line itself is the image tooling's (`sennet_image.qemu.qemu_argv`),
shared with `images/boot`, so the VM tests run the appliance exactly as an
operator boots it. What stays here is harness-shaped: a missing QEMU is a
broken harness (HarnessError), and the KVM probe runs once per test session.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from sennet_image.qemu import QEMU
from sennet_image.qemu import accelerator as probe_accelerator

from sennet.testing.errors import HarnessError


def qemu_binary() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise HarnessError(f"{QEMU} not found: apt-get install qemu-system-x86")
    return path


@functools.cache
def accelerator(kernel: Path) -> str:
    """'kvm' when a KVM guest demonstrably runs here, else 'tcg' (the image tooling's probe)."""
    return probe_accelerator(kernel)

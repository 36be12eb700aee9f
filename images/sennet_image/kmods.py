"""Kernel modules from the pinned kernel, in load order, for a system without modprobe.

The pinned Debian kernel builds its drivers as modules, and the appliance carries
neither kmod nor a modules.dep: whoever loads them (the initramfs's init, the
updater) runs `insmod` down a list. So each list is written in dependency order and
checked here against every module's own `depends=`: a kernel whose configuration
moved, renamed or built in a module stops the build with that module's name, instead
of shipping a box that cannot find its disk or read a USB stick.
"""

from __future__ import annotations

import lzma
import re
import tempfile
from pathlib import Path

from sennet_image import debs
from sennet_image.proc import die

# The drivers a USB stick needs: the xHCI and EHCI host controllers (every x86 box of
# the last fifteen years has one of them), USB mass storage and UAS, SCSI disks with
# the T10 protection-information helpers sd_mod links against. vfat and ext4 are
# already loaded by the initramfs for the ESP and the state partition. Not loaded at
# boot: the updater loads them once the boot's health step is done (see
# python/sennet/update/stick.py), so counting never waits for USB.
USB_STORAGE = (
    "crypto/crct10dif_common",
    "crypto/crct10dif_generic",
    "lib/crc-t10dif",
    "lib/crc64",
    "crypto/crc64_rocksoft_generic",
    "lib/crc64-rocksoft",
    "block/t10-pi",
    "drivers/scsi/scsi_common",
    "drivers/scsi/scsi_mod",
    "drivers/scsi/sd_mod",
    "drivers/usb/common/usb-common",
    "drivers/usb/core/usbcore",
    "drivers/usb/host/xhci-hcd",
    "drivers/usb/host/xhci-pci",
    "drivers/usb/host/ehci-hcd",
    "drivers/usb/host/ehci-pci",
    "drivers/usb/storage/usb-storage",
    "drivers/usb/storage/uas",
)
# Where the root layer keeps them, under /usr/lib/modules/<release>/ (a slot's root and
# kernel come from the same build, so the running kernel's release names the directory).
USB_STORAGE_DIR = "usb-storage"


def depends(ko: bytes) -> list[str]:
    """The module names in the `depends=` field of a module's .modinfo."""
    m = re.search(rb"\0depends=([^\0]*)\0", ko)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def _read(modules_dir: Path, rel: str) -> bytes:
    """`rel`.ko or `rel`.ko.xz (nixpkgs compresses its modules) under kernel/, uncompressed."""
    base = modules_dir / "kernel" / rel
    plain, packed = base.parent / f"{base.name}.ko", base.parent / f"{base.name}.ko.xz"
    if plain.is_file():
        return plain.read_bytes()
    if packed.is_file():
        return lzma.decompress(packed.read_bytes())
    die(f"kernel module {rel}.ko missing in {modules_dir}", hint="did the kernel config change?")
    raise AssertionError("unreachable")


def in_order(
    modules_dir: Path, rels: tuple[str, ...], loaded: frozenset[str] = frozenset()
) -> list[tuple[str, bytes]]:
    """(name, bytes) for each of `rels`, each checked to need only modules before it (or in
    `loaded`: what another list loaded earlier)."""
    have = {n.replace("-", "_") for n in loaded}
    out = []
    for rel in rels:
        ko = _read(modules_dir, rel)
        name = rel.rsplit("/", 1)[-1]
        missing = [d for d in depends(ko) if d.replace("-", "_") not in have]
        if missing:
            die(f"module {name} depends on {missing}, not loaded before it: fix the list's order")
        have.add(name.replace("-", "_"))
        out.append((name, ko))
    return out


def unpack_kernel(kernel_deb: Path, dest: Path) -> tuple[Path, str]:
    """The kernel package's bzImage and its release (the modules are in dest/lib/modules/)."""
    debs.unpack(kernel_deb, dest, only=("boot/vmlinuz-", "lib/modules/"))
    vmlinuz = sorted((dest / "boot").glob("vmlinuz-*"))
    if len(vmlinuz) != 1:
        die(f"{kernel_deb.name}: expected one boot/vmlinuz-*, found {len(vmlinuz)}")
    return vmlinuz[0], vmlinuz[0].name.removeprefix("vmlinuz-")


def install_usb_storage(kernel_deb: Path, root: Path) -> None:
    """USB_STORAGE from the kernel package into the root tree (see write_usb_storage)."""
    with tempfile.TemporaryDirectory() as tmp:
        _, release = unpack_kernel(kernel_deb, Path(tmp))
        write_usb_storage(Path(tmp) / "lib/modules" / release, release, root)


def write_usb_storage(modules_dir: Path, release: str, root: Path) -> None:
    """USB_STORAGE into root/usr/lib/modules/<release>/usb-storage/, with `order` listing
    them in load order (what the updater insmods)."""
    where = root / "usr/lib/modules" / release / USB_STORAGE_DIR
    where.mkdir(parents=True)
    mods = in_order(modules_dir, USB_STORAGE)
    for name, ko in mods:
        (where / f"{name}.ko").write_bytes(ko)
    (where / "order").write_text("".join(f"{name}\n" for name, _ in mods))

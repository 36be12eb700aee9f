"""The initramfs: busybox, the kernel modules the boot needs, and stage-1 init.

Written as a newc cpio by this module rather than by `cpio`, so entry order,
owners, inode numbers and times are fixed by construction; gzip with mtime 0.
The kernel in the pinned package ships those drivers as modules (virtio,
squashfs, ext4, vfat, TC's clsact and cls_bpf), so the order below is
dependency order, checked against each module's `depends=` at build time.
"""

from __future__ import annotations

import gzip
import io
import lzma
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sennet_image import debs
from sennet_image.proc import die, source_date_epoch

IMAGES_DIR = Path(__file__).resolve().parent.parent

# Load order (dependencies first). Paths are relative to /lib/modules/VERSION/kernel.
MODULES = (
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
    "drivers/block/virtio_blk",
    "crypto/crc32c_generic",
    "lib/libcrc32c",
    "lib/crc16",
    "fs/mbcache",
    "fs/jbd2/jbd2",
    "fs/ext4/ext4",
    "fs/squashfs/squashfs",
    "fs/fat/fat",
    "fs/fat/vfat",
    "fs/nls/nls_cp437",
    "fs/nls/nls_ascii",
    "net/sched/sch_ingress",
    "net/sched/cls_bpf",
)


@dataclass(frozen=True)
class Entry:
    """One cpio entry: path (no leading slash), mode (with type bits), data or link target."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def newc(entries: list[Entry], mtime: int) -> bytes:
    """A newc ("070701") archive of `entries` in the given order, with a trailer."""
    out = io.BytesIO()

    def pad(n: int) -> None:
        out.write(b"\0" * ((4 - n % 4) % 4))

    for ino, e in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = e.path.encode() + b"\0"
        last = e.path == "TRAILER!!!"
        nlink = 2 if e.mode & 0o170000 == 0o040000 else 1
        fields = [
            0 if last else ino,
            e.mode,
            0,
            0,
            0 if last else nlink,
            0 if last else mtime,
            len(e.data),
            0,
            0,
            e.rdev[0],
            e.rdev[1],
            len(name),
            0,
        ]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.write(header + name)
        pad(len(header) + len(name))
        out.write(e.data)
        pad(len(e.data))
    return out.getvalue()


def _depends(ko: bytes) -> list[str]:
    m = re.search(rb"\0depends=([^\0]*)\0", ko)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def build(kernel_deb: Path, busybox_deb: Path, initrds: dict[Path, str], out_vmlinuz: Path) -> str:
    """From the pinned debs: write the kernel and one initramfs per `initrds` entry (path ->
    its `etc/partitions`, see disk.partition_table); return the kernel release."""
    with tempfile.TemporaryDirectory() as tmp:
        kroot, broot = Path(tmp) / "k", Path(tmp) / "b"
        debs.unpack(kernel_deb, kroot, only=("boot/vmlinuz-", "lib/modules/"))
        debs.unpack(busybox_deb, broot, only=("bin/busybox", "usr/bin/busybox"))
        vmlinuz = sorted((kroot / "boot").glob("vmlinuz-*"))
        if len(vmlinuz) != 1:
            die(f"{kernel_deb.name}: expected one boot/vmlinuz-*, found {len(vmlinuz)}")
        release = vmlinuz[0].name.removeprefix("vmlinuz-")
        bb = next(
            (p for p in (broot / "bin/busybox", broot / "usr/bin/busybox") if p.exists()), None
        )
        if bb is None:
            die(f"{busybox_deb.name}: no busybox binary inside")
        build_from_tree(vmlinuz[0], kroot / "lib/modules" / release, bb, initrds, out_vmlinuz)
    return release


def build_from_tree(
    vmlinuz: Path, modules_dir: Path, busybox: Path, initrds: dict[Path, str], out_vmlinuz: Path
) -> None:
    """From an unpacked kernel (Debian's or nixpkgs'): modules may be .ko or .ko.xz.

    Each initramfs differs only in `etc/partitions`: the GPT GUIDs its init mounts
    (nothing else on any disk is ever mounted or run)."""
    shutil.copyfile(vmlinuz, out_vmlinuz)
    entries = [
        Entry(d, 0o040755)
        for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "sysroot")
    ]
    entries.append(Entry("dev/console", 0o020600, rdev=(5, 1)))
    entries.append(Entry("bin/busybox", 0o100755, busybox.read_bytes()))
    entries.append(Entry("bin/sh", 0o120777, b"busybox"))
    loaded: set[str] = set()
    names = []
    for rel in MODULES:
        base = modules_dir / "kernel" / rel
        if (base.parent / f"{base.name}.ko").is_file():
            ko = (base.parent / f"{base.name}.ko").read_bytes()
        elif (base.parent / f"{base.name}.ko.xz").is_file():
            ko = lzma.decompress((base.parent / f"{base.name}.ko.xz").read_bytes())
        else:
            die(
                f"kernel module {rel}.ko missing in {modules_dir}",
                hint="did the kernel config change?",
            )
        name = rel.rsplit("/", 1)[-1]
        missing = [d for d in _depends(ko) if d.replace("-", "_") not in loaded]
        if missing:
            die(f"module {name} depends on {missing}, not loaded before it: fix MODULES order")
        loaded.add(name.replace("-", "_"))
        names.append(name)
        entries.append(Entry(f"lib/modules/{name}.ko", 0o100644, ko))
    entries.append(Entry("etc/modules", 0o100644, ("\n".join(names) + "\n").encode()))
    entries.append(Entry("init", 0o100755, (IMAGES_DIR / "initramfs/init").read_bytes()))
    for out_initrd, table in initrds.items():
        blob = newc(
            [*entries, Entry("etc/partitions", 0o100644, table.encode())], source_date_epoch()
        )
        out_initrd.write_bytes(gzip.compress(blob, compresslevel=9, mtime=0))

"""The initramfs: busybox, the kernel modules the boot needs, and stage-1 init.

Written as a newc cpio by this module rather than by `cpio`, so entry order,
owners, inode numbers and times are fixed by construction; xz (see `compress`).
The kernel in the pinned package ships those drivers as modules (virtio,
squashfs, ext4, vfat, TC's clsact and cls_bpf), so the order below is
dependency order, checked against each module's `depends=` at build time.
"""

from __future__ import annotations

import io
import lzma
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sennet_image import debs, kmods
from sennet_image.proc import die, run, source_date_epoch

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
    # dm-verity for the root and agent layers (the command line carries their root hashes)
    "drivers/md/dm-mod",
    "drivers/md/dm-bufio",
    "lib/reed_solomon/reed_solomon",
    "drivers/md/dm-verity",
    "net/sched/sch_ingress",
    "net/sched/cls_bpf",
)
# dmsetup (Debian's, with its shared libraries from the pinned debs) sets up the verity
# targets: a smaller closure than veritysetup's (no libcryptsetup, OpenSSL, argon2, json-c).
DMSETUP = ("sbin/dmsetup", "usr/sbin/dmsetup")
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")
INTERPRETER = "ld-linux-x86-64.so.2"


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


def _needed(elf: Path) -> list[str]:
    """The DT_NEEDED sonames of an ELF file (objdump, binutils)."""
    out = run(["objdump", "-p", elf]).stdout.decode()
    return re.findall(r"^\s+NEEDED\s+(\S+)$", out, re.MULTILINE)


def _inside(tree: Path, path: Path) -> Path:
    """`path` with symlinks followed inside `tree` (absolute links point into the tree)."""
    for _ in range(16):
        if not path.is_symlink():
            return path
        target = Path(os.readlink(path))
        path = tree / target.relative_to("/") if target.is_absolute() else path.parent / target
    die(f"symlink loop at {path}")


def _lib(tree: Path, soname: str) -> Path:
    found = next((tree / d / soname for d in LIB_DIRS if (tree / d / soname).exists()), None)
    if found is None:
        die(f"{soname} is in no unpacked initramfs deb", hint="add its package to inputs.toml")
    return _inside(tree, found)


def compress(blob: bytes) -> bytes:
    """zstd -19, by the build root's zstd: 3.10 MB of the 10.7 MB cpio (xz -9 made 2.85,
    gzip -9 4.21). The kernel unpacks it before anything runs, on every UEFI boot: under
    TCG xz took 7.6-8.3 s to the initramfs's start against 4.0-5.8 s for zstd, the same
    as the uncompressed cpio (3 interleaved boots each, images/README.md). One thread:
    zstd's multi-threaded frames differ, and the bytes must not depend on the machine."""
    zstd = ["zstd", "-19", "-T1", "-q", "--no-progress", "-c"]
    return run(zstd, input_bytes=blob).stdout


def elf_closure(tree: Path, program: Path, dest: str) -> list[Entry]:
    """`program` (unpacked in `tree`) at `dest`, its shared libraries (DT_NEEDED, followed
    transitively) in /lib/x86_64-linux-gnu, and the dynamic loader at /lib64."""
    entries = [
        Entry(d, 0o040755) for d in ("lib64", "lib/x86_64-linux-gnu", dest.rsplit("/", 1)[0])
    ]
    entries.append(Entry(dest, 0o100755, program.read_bytes()))
    seen: set[str] = set()
    todo = _needed(program)
    while todo:
        soname = todo.pop(0)
        if soname in seen:
            continue
        seen.add(soname)
        if soname == INTERPRETER:  # libc names the loader: a link to the one copy in /lib64
            target = f"/lib64/{INTERPRETER}".encode()
            entries.append(Entry(f"lib/x86_64-linux-gnu/{soname}", 0o120777, target))
            continue
        lib = _lib(tree, soname)
        entries.append(Entry(f"lib/x86_64-linux-gnu/{soname}", 0o100755, lib.read_bytes()))
        todo += _needed(lib)
    loader = _lib(tree, INTERPRETER).read_bytes()
    entries.append(Entry(f"lib64/{INTERPRETER}", 0o100755, loader))
    return entries


def dmsetup_entries(lib_debs: list[Path]) -> list[Entry]:
    """dmsetup and its libraries from the pinned debs (dmsetup, libdevmapper, libc, ...)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        for deb in sorted(lib_debs, key=lambda p: p.name):
            debs.unpack(deb, tree, only=(*LIB_DIRS, *DMSETUP))
        program = next((tree / p for p in DMSETUP if (tree / p).is_file()), None)
        if program is None:
            die("no sbin/dmsetup in the initramfs debs", hint="pin dmsetup in inputs.toml")
        return elf_closure(tree, program, "sbin/dmsetup")


def build(
    kernel_deb: Path,
    busybox_deb: Path,
    lib_debs: list[Path],
    initrds: dict[Path, str],
    out_vmlinuz: Path,
) -> str:
    """From the pinned debs: write the kernel and one initramfs per `initrds` entry (path ->
    its `etc/partitions`, see disk.partition_table); return the kernel release. `lib_debs`
    hold dmsetup and its shared libraries."""
    extra = dmsetup_entries(lib_debs)
    with tempfile.TemporaryDirectory() as tmp:
        kroot, broot = Path(tmp) / "k", Path(tmp) / "b"
        vmlinuz, release = kmods.unpack_kernel(kernel_deb, kroot)
        debs.unpack(busybox_deb, broot, only=("bin/busybox", "usr/bin/busybox"))
        bb = next(
            (p for p in (broot / "bin/busybox", broot / "usr/bin/busybox") if p.exists()), None
        )
        if bb is None:
            die(f"{busybox_deb.name}: no busybox binary inside")
        build_from_tree(vmlinuz, kroot / "lib/modules" / release, bb, initrds, out_vmlinuz, extra)
    return release


def build_from_tree(
    vmlinuz: Path,
    modules_dir: Path,
    busybox: Path,
    initrds: dict[Path, str],
    out_vmlinuz: Path,
    extra: list[Entry] | None = None,
) -> None:
    """From an unpacked kernel (Debian's or nixpkgs'): modules may be .ko or .ko.xz.

    Beside the bzImage, `vmlinux` (see `vmlinux`), and beside each zstd initramfs its cpio
    uncompressed (`.cpio`): a direct boot takes those two, which saves the kernel's own
    unpacking; the UKI keeps the smaller zstd. Each initramfs
    differs only in `etc/partitions`: the GPT GUIDs its init mounts
    (nothing else on any disk is ever mounted or run)."""
    shutil.copyfile(vmlinuz, out_vmlinuz)
    entries = [
        Entry(d, 0o040755)
        for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "sysroot")
    ]
    entries.append(Entry("dev/console", 0o020600, rdev=(5, 1)))
    entries.append(Entry("bin/busybox", 0o100755, busybox.read_bytes()))
    entries.append(Entry("bin/sh", 0o120777, b"busybox"))
    names = []
    for name, ko in kmods.in_order(modules_dir, MODULES):
        names.append(name)
        entries.append(Entry(f"lib/modules/{name}.ko", 0o100644, ko))
    entries.append(Entry("etc/modules", 0o100644, ("\n".join(names) + "\n").encode()))
    entries += extra or []
    entries.append(Entry("init", 0o100755, (IMAGES_DIR / "initramfs/init").read_bytes()))
    out_vmlinuz.with_name("vmlinux").write_bytes(vmlinux(vmlinuz.read_bytes()))
    for out_initrd, table in initrds.items():
        blob = newc(
            [*entries, Entry("etc/partitions", 0o100644, table.encode())], source_date_epoch()
        )
        out_initrd.write_bytes(compress(blob))
        out_initrd.with_suffix(".cpio").write_bytes(blob)


XZ_MAGIC = b"\xfd7zXZ\x00"


def vmlinux(bzimage: bytes) -> bytes:
    """The kernel's own ELF, for direct boots: what the bzImage carries xz-compressed.

    Measured under TCG, QEMU and SeaBIOS loading the bzImage and the kernel unpacking
    itself took 5.5-6.5 s before its clock started; QEMU loads this ELF through its PVH
    entry point (the kernel has CONFIG_PVH) in 0.3-0.7 s. A UEFI boot needs the EFI stub,
    so the UKIs keep the bzImage. The way the kernel's scripts/extract-vmlinux finds it:
    the first xz stream that unpacks to an ELF file."""
    at = bzimage.find(XZ_MAGIC)
    while at >= 0:
        try:
            elf = lzma.LZMADecompressor().decompress(bzimage[at:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(b"\x7fELF"):
            return elf
        at = bzimage.find(XZ_MAGIC, at + 1)
    die(
        "no xz-compressed ELF kernel inside the bzImage",
        hint="was the kernel built with CONFIG_KERNEL_XZ?",
    )

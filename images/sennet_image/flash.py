"""`images/flash IMAGE TARGET`: write an appliance image to a disk (or a file), safely.

IMAGE is a raw disk image, or one compressed with xz (`.xz`, decompressed on
the fly). TARGET is a block device or a regular file. Before a byte is
written: a device that is mounted, or whose partitions are, or that another
device sits on (holders: device-mapper, md, loop) is refused; a TARGET that
already holds a partition table (blkid's probe) is overwritten only after a
`y` on the terminal, or with --yes (without a terminal and without --yes:
refused). Then the image is written, fsync'd, its cached pages dropped, and
read back: the sha256 of what TARGET now holds over the image's length must
equal the image's, or the flash failed (exit 1).
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sennet.common.errors import EXIT_FAILED, EXIT_OK

from sennet_image.proc import die, log, run

CHUNK = 4 << 20
PROGRESS_EVERY_S = 2.0


def chunks(image: Path) -> Iterator[bytes]:
    """The image's bytes (xz decompressed when the name ends in .xz), CHUNK at a time."""
    try:
        with image.open("rb") as raw:
            if not image.name.endswith(".xz"):
                yield from _blocks(raw)
                return
            with lzma.open(raw, "rb") as xz:
                try:
                    yield from _blocks(xz)
                except lzma.LZMAError as e:
                    die(f"{image}: not a valid xz stream ({e})")
    except OSError as e:
        die(f"cannot read image {image}: {e.strerror}")


def _blocks(f: IO[bytes]) -> Iterator[bytes]:
    while block := f.read(CHUNK):
        yield block


def image_size_and_digest(image: Path) -> tuple[int, str]:
    """Length and sha256 of the (decompressed) image."""
    h, n = hashlib.sha256(), 0
    for block in chunks(image):
        h.update(block)
        n += len(block)
    if n == 0:
        die(f"{image}: empty image")
    return n, h.hexdigest()


def _devnum(target: Path) -> int | None:
    """The device number of a block device; None for a file (or nothing yet)."""
    if not target.exists():
        return None
    st = target.stat()
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def _sys_block(rdev: int) -> Path:
    return Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}").resolve()


def in_use(target: Path) -> list[str]:
    """Why a block device may not be written: its (or a partition's) mounts and holders."""
    rdev = _devnum(target)
    if rdev is None:
        return []
    sysdir = _sys_block(rdev)
    devs = {f"{os.major(rdev)}:{os.minor(rdev)}": sysdir.name}
    for part in sysdir.iterdir():
        if (part / "partition").is_file():
            devs[(part / "dev").read_text().strip()] = part.name
    reasons = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[2] in devs:
            reasons.append(f"/dev/{devs[fields[2]]} is mounted at {fields[4]}")
    for name in devs.values():
        holders = sysdir / "holders" if name == sysdir.name else sysdir / name / "holders"
        for h in sorted(holders.iterdir()) if holders.is_dir() else []:
            reasons.append(f"/dev/{name} is held by /dev/{h.name}")
    return reasons


def partition_table(target: Path) -> str | None:
    """The partition table type blkid finds on `target` (gpt, dos, ...), or None."""
    if not target.exists() or (target.is_file() and target.stat().st_size == 0):
        return None
    res = run(["blkid", "-p", "-s", "PTTYPE", "-o", "value", target], check=False)
    found = res.stdout.decode().strip()
    return found or None


def confirm(target: Path, pttype: str, yes: bool) -> None:
    """Go on only with --yes or a `y` typed on the terminal; otherwise refuse."""
    if yes:
        return
    if not sys.stdin.isatty():
        die(
            f"{target} holds a partition table ({pttype}); refusing to overwrite it",
            hint="pass --yes to overwrite it without asking",
        )
    sys.stderr.write(f"{target} holds a partition table ({pttype}). Overwrite it? [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        die(f"{target} left untouched")


class Progress:
    """`event=flash_progress` lines on stderr at most every PROGRESS_EVERY_S seconds."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what = total, what
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S or done == self.total:
            self.last = now
            rate = done / max(now - self.start, 1e-6) / 2**20
            log(
                self.what,
                mib=f"{done / 2**20:.0f}/{self.total / 2**20:.0f}",
                percent=f"{100 * done / self.total:.0f}",
                mib_s=f"{rate:.1f}",
            )


def write(image: Path, target: Path, size: int) -> None:
    """Copy the image onto `target`, fsync. A regular file is cut to the image's size and
    keeps all-zero chunks as holes; a device gets every byte (old data must not survive)."""
    is_file = _devnum(target) is None
    flags = os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if is_file else os.O_EXCL)
    try:
        fd = os.open(target, flags, 0o644)
    except OSError as e:
        die(f"cannot open {target} for writing: {e.strerror}")
    try:
        if not is_file and os.lseek(fd, 0, os.SEEK_END) < size:
            die(f"{target} is smaller than the image ({size} bytes)")
        os.lseek(fd, 0, os.SEEK_SET)
        progress, done = Progress(size, "flash_progress"), 0
        for block in chunks(image):
            if is_file and block.count(0) == len(block):
                os.lseek(fd, len(block), os.SEEK_CUR)  # a hole reads back as zeros
            else:
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
            done += len(block)
            progress.update(done)
        if is_file:
            os.ftruncate(fd, size)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_back(target: Path, size: int) -> str:
    """sha256 of the first `size` bytes `target` now holds (read after the cache is dropped)."""
    h, left = hashlib.sha256(), size
    progress = Progress(size, "verify_progress")
    with target.open("rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
            progress.update(size - left)
    if left:
        die(f"{target} ended {left} bytes before the image did")
    return h.hexdigest()


def flash(image: Path, target: Path, yes: bool) -> bool:
    """Check, write, verify. True when the read-back digest equals the image's."""
    if not image.is_file():
        die(f"image not found: {image}")
    if target.exists() and not (target.is_file() or _devnum(target) is not None):
        die(f"{target} is neither a block device nor a regular file")
    if target.exists() and target.resolve() == image.resolve():
        die(f"{target} is the image itself")
    reasons = in_use(target) if target.exists() else []
    if reasons:
        die(f"{target} is in use: " + "; ".join(reasons), hint="unmount it first")
    size, digest = image_size_and_digest(image)
    pttype = partition_table(target)
    if pttype is not None:
        confirm(target, pttype, yes)
    log("flash_start", image=image, target=target, mib=f"{size / 2**20:.1f}", sha256=digest)
    write(image, target, size)
    got = read_back(target, size)
    if got != digest:
        log("flash_verify_failed", target=target, expected=digest, read_back=got)
        return False
    log("flash_done", target=target, sha256=got)
    return True


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flash command's arguments (`sennet_image flash`)."""
    p.add_argument("image", type=Path, help="appliance.raw, or appliance.raw.xz")
    p.add_argument("target", type=Path, help="a block device (/dev/sdX) or a file")
    p.add_argument("--yes", action="store_true", help="overwrite a partition table without asking")


def main(args: argparse.Namespace) -> int:
    """Exit 0 when written and verified, 1 when the read-back differs."""
    return EXIT_OK if flash(args.image, args.target, args.yes) else EXIT_FAILED

"""Which slot is running, where the other slot's partitions are, and writing one safely.

The booted slot, version and image digest come from `/run/sennet/image.env`
(written by rc.boot from the UKI's command line), else the command line itself;
an image booted without them is slot a. The partitions come from
`/run/sennet/partitions` (`ROLE=DEV`, found by the initramfs by GPT GUID), else
from sysfs by GPT partition name (`root-b`, ...). Writing goes to the raw
partition, is fsynced, and is read back from the device (page cache dropped)
and compared with the manifest's sha256: a slot is never trusted on the write's word.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sennet.update.errors import UpdateFailed

SLOTS = ("a", "b")
CHUNK = 1024 * 1024


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


@dataclass(frozen=True)
class Booted:
    slot: str
    version: str
    image_digest: str


def _env_lines(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def booted(image_env: Path, cmdline: Path, default_version: str) -> Booted:
    """The running image's identity (image.env, else the kernel command line, else slot a)."""
    values: dict[str, str] = {}
    try:
        env = _env_lines(image_env.read_text())
        values = {
            "slot": env.get("SENNET_SLOT", ""),
            "version": env.get("SENNET_IMAGE_VERSION", ""),
            "image_digest": env.get("SENNET_IMAGE_DIGEST", ""),
        }
    except OSError:
        try:
            words = cmdline.read_text().split()
        except OSError:
            words = []
        for word in words:
            key, _, value = word.partition("=")
            if key in ("sennet.slot", "sennet.version", "sennet.image_digest"):
                values[key.removeprefix("sennet.")] = value
    slot = values.get("slot") or "a"
    if slot not in SLOTS:
        slot = "a"
    return Booted(slot, values.get("version") or default_version, values.get("image_digest", ""))


def _by_partname(sys_block: Path, name: str) -> Path | None:
    for uevent in sorted(sys_block.glob("*/uevent")):
        try:
            fields = _env_lines(uevent.read_text())
        except OSError:
            continue
        if fields.get("PARTNAME") == name and fields.get("DEVNAME"):
            return Path("/dev") / fields["DEVNAME"]
    return None


def device(role: str, partitions: Path, sys_block: Path = Path("/sys/class/block")) -> Path | None:
    """The device (or, in tests, file) of `role` ("root-b", "agent-b", "esp"...), or None."""
    try:
        table = _env_lines(partitions.read_text())
    except OSError:
        table = {}
    dev = table.get(role.replace("-", "_"), "") or table.get(role, "")  # the initramfs: root_b=
    if dev.startswith("/"):
        return Path(dev)
    return _by_partname(sys_block, role)


def capacity(path: Path) -> int:
    """Bytes a partition (block device: its size; file: its length) can hold."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def write_image(path: Path, chunks: Iterable[bytes], sha256: str, size: int) -> None:
    """Write an image at the start of `path`, fsync, read it back and compare; `UpdateFailed`."""
    h = hashlib.sha256()
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        for data in chunks:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            h.update(data)
            written += len(data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if written != size or h.hexdigest() != sha256:
        raise UpdateFailed(f"{path}: wrote {written} bytes with another sha256 than the manifest's")
    got = read_back(path, size)
    if got != sha256:
        raise UpdateFailed(f"{path}: read back sha256 {got[:16]}... differs from what was written")


def read_back(path: Path, size: int) -> str:
    """sha256 of the first `size` bytes as the device has them, not as the page cache does."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        h = hashlib.sha256()
        left = size
        while left > 0:
            data = os.read(fd, min(CHUNK, left))
            if not data:
                raise UpdateFailed(f"{path}: ends {left} bytes early on read-back")
            h.update(data)
            left -= len(data)
        return h.hexdigest()
    finally:
        os.close(fd)

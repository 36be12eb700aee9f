"""Boot entries on the ESP: one UKI per slot, with systemd's boot-counting file names.

`\\EFI\\Linux\\sennet-<slot>-<version>.efi` is a committed entry;
`sennet-<slot>-<version>+<left>-<done>.efi` is on trial: systemd-boot renames it
at each try (left-1, done+1), and an entry with left=0 is bad and sorts last, so
the firmware falls back to the other slot by itself. The updater installs a new
entry under a temporary name (not `*.efi`, so never booted), fsyncs it, then
renames it in place; commits by dropping the counter; marks bad by setting left
to 0. The ESP is mounted read-only and made writable only around these steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sennet.update.errors import UpdateFailed

ENTRY_DIR = Path("EFI") / "Linux"
_ENTRY = re.compile(r"^sennet-([ab])-([0-9][0-9.]*?)(?:\+([0-9]+)(?:-([0-9]+))?)?\.efi$")


@dataclass(frozen=True)
class Entry:
    path: Path
    slot: str
    version: str
    left: int | None  # None: committed (no counter)
    done: int

    @property
    def on_trial(self) -> bool:
        return self.left is not None

    @property
    def bad(self) -> bool:
        return self.left == 0


def parse(path: Path) -> Entry | None:
    """An entry from its file name (case as vfat returns it), or None for other files."""
    m = _ENTRY.match(path.name.lower())
    if m is None:
        return None
    left = int(m.group(3)) if m.group(3) is not None else None
    return Entry(path, m.group(1), m.group(2), left, int(m.group(4) or 0))


def entries(esp: Path) -> list[Entry]:
    directory = esp / ENTRY_DIR
    if not directory.is_dir():
        return []
    found = [parse(p) for p in sorted(directory.iterdir())]
    return [e for e in found if e is not None]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; remount ro flushes
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def writable(esp: Path) -> Iterator[None]:
    """Remount the ESP read-write for the block, read-only after (a no-op if not a mount point)."""
    mounted = os.path.ismount(esp)
    if mounted:
        done = subprocess.run(
            ["mount", "-o", "remount,rw", str(esp)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise UpdateFailed(f"cannot remount {esp} read-write: {done.stderr.strip()}")
    try:
        yield
    finally:
        if mounted:
            os.sync()
            subprocess.run(["mount", "-o", "remount,ro", str(esp)], check=False)


def remove_slot(esp: Path, slot: str) -> list[str]:
    """Delete every entry of `slot` (and a leftover temporary); the names removed."""
    removed = []
    for entry in entries(esp):
        if entry.slot == slot:
            entry.path.unlink()
            removed.append(entry.path.name)
    (esp / ENTRY_DIR / f".sennet-{slot}.tmp").unlink(missing_ok=True)
    if removed:
        _fsync_dir(esp / ENTRY_DIR)
    return removed


def entry_name(slot: str, version: str, tries: int | None) -> str:
    counter = f"+{tries}-0" if tries is not None else ""
    return f"sennet-{slot}-{version}{counter}.efi"


def install(
    esp: Path, slot: str, version: str, tries: int, chunks: Iterable[bytes], sha256: str
) -> Path:
    """Write a UKI as a trial entry: temporary name, fsync, check its sha256, rename, fsync
    the directory. Until the rename nothing bootable exists; a mismatch leaves nothing."""
    directory = esp / ENTRY_DIR
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".sennet-{slot}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    h = hashlib.sha256()
    try:
        for data in chunks:
            h.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    if h.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise UpdateFailed(f"{tmp}: the UKI written is not the one verified")
    final = directory / entry_name(slot, version, tries)
    os.rename(tmp, final)
    _fsync_dir(directory)
    return final


def rename(entry: Entry, name: str) -> Path:
    target = entry.path.with_name(name)
    os.rename(entry.path, target)
    _fsync_dir(entry.path.parent)
    return target


def commit(entry: Entry) -> Path:
    """Drop the counter: the entry is good from now on."""
    return rename(entry, entry_name(entry.slot, entry.version, None))


def mark_bad(entry: Entry) -> Path:
    """left=0: systemd-boot sorts it last and boots the other slot."""
    return rename(entry, f"sennet-{entry.slot}-{entry.version}+0-{entry.done}.efi")


def find(esp: Path, slot: str, version: str) -> Entry | None:
    """The entry of a slot and version (committed or on trial), if any."""
    for entry in entries(esp):
        if entry.slot == slot and entry.version == version:
            return entry
    return None

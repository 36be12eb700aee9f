"""A/B slots: the image's identity and the boot entries systemd-boot chooses between.

Each slot holds a root and an agent layer; the ESP holds one unified kernel
image per slot as a Boot Loader Specification type #2 entry,
`\\EFI\\Linux\\sennet-<slot>-<version>[+<left>-<done>].efi`. systemd-boot
(v252, Debian 12) orders those entries by (tries left == 0 last, IMAGE_ID,
IMAGE_VERSION newest first, file name newest first) and boots the first one,
so a trial entry of a newer version boots first, an entry with no tries left
never comes first, and otherwise the newest committed slot boots. See
images/README.md "Choosing the slot at boot".

The image digest names the pair of layers a slot holds, independent of the
variant and of where the bytes sit on a disk: the updater, the agent's
heartbeat and the bundle manifest all quote it.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sennet_image.fsutil import sha256_file
from sennet_image.proc import die

SLOTS = ("a", "b")
DIGEST_FORMAT = "sennet-slot/1"
IMAGE_ID = "sennet"
# A version as the bundle and the boot entries carry it: dotted numbers, an optional
# `-suffix`/`+local` part of safe characters (it lands in a FAT file name).
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*([-~][A-Za-z0-9.]+)?$")
ENTRY_RE = re.compile(
    r"^sennet-(?P<slot>[ab])-(?P<version>[^+]+?)(\+(?P<left>[0-9]+)(-(?P<done>[0-9]+))?)?\.efi$"
)


@dataclass(frozen=True)
class Identity:
    """What a build (or a slot) is: its version and the digest of its two layers."""

    version: str
    image_digest: str

    def cmdline(self, base: str, slot: str) -> str:
        """`base` plus the slot's identity, as the UKI of `slot` (or direct boot) carries it."""
        check_slot(slot)
        return (
            f"{base} sennet.slot={slot} sennet.version={self.version}"
            f" sennet.image_digest={self.image_digest}"
        )


def check_slot(slot: str) -> str:
    """`slot` if it names a slot; otherwise one clear error."""
    if slot not in SLOTS:
        die(f"unknown slot {slot!r}: one of {', '.join(SLOTS)}")
    return slot


def check_version(version: str, where: str) -> str:
    """`version` if it is a version a boot entry can carry; otherwise one error naming `where`."""
    if not VERSION_RE.match(version):
        die(f"{where}: {version!r} is not a version (digits and dots, e.g. 0.2.0)")
    return version


def image_digest(root: Path, agent: Path) -> str:
    """sha256 over the text naming both layers' sha256 (the shared contract's digest)."""
    text = f"{DIGEST_FORMAT}\nroot {sha256_file(root)}\nagent {sha256_file(agent)}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def image_version() -> str:
    """The version this build carries: SENNET_IMAGE_VERSION, else the agent package's."""
    from sennet import __version__

    given = os.environ.get("SENNET_IMAGE_VERSION", "")
    if given:
        return check_version(given, "SENNET_IMAGE_VERSION")
    return check_version(__version__, "sennet.__version__")


def identity(root: Path, agent: Path) -> Identity:
    """This build's identity from its layers (and the version rule above)."""
    return Identity(image_version(), image_digest(root, agent))


def entry_name(slot: str, version: str, left: int | None = None, done: int = 0) -> str:
    """The ESP file name of `slot`'s UKI; with `left`, a trial entry counting its boots."""
    check_slot(slot)
    check_version(version, "boot entry version")
    counter = "" if left is None else f"+{left}-{done}"
    return f"sennet-{slot}-{version}{counter}.efi"


@dataclass(frozen=True)
class Entry:
    """A parsed boot entry name: slot, version, and the counter (None = committed)."""

    slot: str
    version: str
    left: int | None
    done: int


def parse_entry(name: str) -> Entry | None:
    """The entry a file in \\EFI\\Linux names, or None if it is not one of ours."""
    m = ENTRY_RE.match(name.lower())
    if m is None:
        return None
    left = None if m.group("left") is None else int(m.group("left"))
    return Entry(m.group("slot"), m.group("version"), left, int(m.group("done") or 0))


def osrel(base: str, version: str) -> str:
    """The UKI's .osrel: the root's os-release plus IMAGE_ID and IMAGE_VERSION, which
    systemd-boot uses as the sort key and the version it orders entries by."""
    return f"{base}IMAGE_ID={IMAGE_ID}\nIMAGE_VERSION={version}\n"


def _version_key(version: str) -> tuple[int, ...]:
    """Dotted numbers as a tuple: how systemd's strverscmp_improved orders the versions
    VERSION_RE admits without a suffix (a suffix is compared as text, after the numbers)."""
    return tuple(int(n) for n in re.split(r"[-~]", version, maxsplit=1)[0].split("."))


def boot_order(names: list[str]) -> list[str]:
    """Our entries in the order systemd-boot v252 sorts them (the first one boots):
    no tries left last; newest IMAGE_VERSION first; then file name descending; then more
    tries left, fewer done. Names that are not our entries are left out."""
    entries = [(n, e) for n in names if (e := parse_entry(n)) is not None]

    def key(item: tuple[str, Entry]) -> tuple[object, ...]:
        name, e = item
        bad = e.left == 0
        counted = e.left is not None
        return (
            bad,
            tuple(-n for n in _version_key(e.version)),
            e.version,  # a suffix, compared as text (rare: releases carry none)
            [-ord(c) for c in name.lower()],
            -(e.left or 0) if counted else 0,
            e.done if counted else 0,
        )

    return [n for n, _ in sorted(entries, key=key)]

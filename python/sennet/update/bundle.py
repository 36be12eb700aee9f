"""Reading and verifying a bundle before a byte is written anywhere.

A bundle is one uncompressed POSIX tar: manifest.json, manifest.sig, uki-a.efi,
uki-b.efi, root.img, agent.img, in that order. `verify` checks, in order: the
tar's shape (every member there, regular, in order, inside the file: else
`truncated` or `malformed`), the signature over manifest.json with the keyring,
the manifest's compatible string and versions, then every member's size and
sha256 by a full read. The caller keeps the open file, so the bytes written
later come from the same inode that was verified (and are hashed again on the way).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sennet.update import manifest as manifest_mod
from sennet.update import signature, versions
from sennet.update.errors import Refused

MEMBERS = ("manifest.json", "manifest.sig", *manifest_mod.IMAGES.values())
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the data in the bundle file
    size: int


@dataclass(frozen=True)
class Policy:
    """What this device accepts: its compatible string, running version and the floor."""

    compatible: str
    running_version: str
    min_version: str
    keyring: Path


@dataclass
class Verified:
    """A bundle that passed every check; `file` stays open for the write."""

    path: Path
    file: BinaryIO
    manifest: manifest_mod.Manifest
    members: dict[str, Member]
    key: Path

    def close(self) -> None:
        self.file.close()

    def chunks(self, image: str) -> Iterator[bytes]:
        """The bytes of one image (manifest key: "root", "uki-b", ...), read in chunks."""
        member = self.members[manifest_mod.IMAGES[image]]
        yield from read_range(self.file, member.offset, member.size)


def read_range(f: BinaryIO, offset: int, size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        data = os.pread(f.fileno(), min(CHUNK, left), offset + size - left)
        if not data:
            raise Refused("truncated", f"file ends {left} bytes before the member does")
        left -= len(data)
        yield data


def members(f: BinaryIO, path: Path) -> dict[str, Member]:
    """The tar's members, checked for names, order, type and that their data lies in the file."""
    file_size = os.fstat(f.fileno()).st_size
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            infos = tar.getmembers()
    except tarfile.ReadError as exc:
        why = "truncated" if "unexpected end" in str(exc) or file_size < 1024 else "malformed"
        raise Refused(why, f"{path.name}: not a readable tar ({exc})") from None
    names = tuple(i.name for i in infos)
    if names != MEMBERS[: len(names)] or not names:
        raise Refused("malformed", f"members are {list(names)}, expected {list(MEMBERS)}")
    found: dict[str, Member] = {}
    for info in infos:
        if not info.isreg():
            raise Refused("malformed", f"member {info.name} is not a regular file")
        if info.offset_data + info.size > file_size:
            raise Refused("truncated", f"member {info.name} runs past the end of the file")
        found[info.name] = Member(info.name, info.offset_data, info.size)
    if len(names) < len(MEMBERS):
        raise Refused("truncated", f"file ends after member {names[-1]}")
    # A tar ends with two zero blocks: without them the copy stopped early, even if
    # every member happens to be whole.
    last = found[MEMBERS[-1]]
    end = -(-(last.offset + last.size) // 512) * 512
    if os.pread(f.fileno(), 1024, end) != bytes(1024):
        raise Refused("truncated", "no end-of-archive marker after the last member")
    return found


def manifest_bytes(f: BinaryIO, found: dict[str, Member]) -> bytes:
    """manifest.json's bytes, its size checked before a byte is read (a crafted bundle's
    gigabyte "manifest" must not be read into memory to be refused)."""
    m = found["manifest.json"]
    if m.size > manifest_mod.MAX_MANIFEST_BYTES:
        raise Refused("malformed", f"manifest.json is {m.size} bytes, too large")
    return b"".join(read_range(f, m.offset, m.size))


def _check_policy(m: manifest_mod.Manifest, policy: Policy) -> None:
    if m.compatible != policy.compatible:
        raise Refused("incompatible", f"bundle is for {m.compatible}, this is {policy.compatible}")
    new, running = versions.parse(m.version), versions.parse(policy.running_version)
    running_text = policy.running_version
    if running < versions.parse(m.min_from_version):
        raise Refused(
            "incompatible",
            f"bundle {m.version} needs at least {m.min_from_version}, "
            f"running {policy.running_version}",
        )
    if new < versions.parse(policy.min_version):
        raise Refused(
            "downgrade", f"bundle {m.version} is below update_min_version {policy.min_version}"
        )
    if new == running:
        raise Refused("same_version", f"bundle {m.version} is the running version")
    if new < running:
        # systemd-boot boots the newest version first: an older trial would never be tried
        raise Refused("downgrade", f"bundle {m.version} is older than the running {running_text}")


def _check_images(f: BinaryIO, m: manifest_mod.Manifest, found: dict[str, Member]) -> None:
    for key, member_name in manifest_mod.IMAGES.items():
        ref, member = m.images[key], found[member_name]
        if member.size != ref.size:
            raise Refused(
                "digest", f"{member_name} is {member.size} bytes, manifest says {ref.size}"
            )
        h = hashlib.sha256()
        for data in read_range(f, member.offset, member.size):
            h.update(data)
        if h.hexdigest() != ref.sha256:
            raise Refused("digest", f"{member_name} sha256 {h.hexdigest()[:16]}... != manifest")


def verify(path: Path, policy: Policy) -> Verified:
    """Every check of the module docstring; the open, verified bundle, or `Refused`."""
    try:
        f: BinaryIO = open(path, "rb")  # noqa: SIM115 (kept open for the write, closed by caller)
    except OSError as exc:
        raise Refused("malformed", f"cannot open {path}: {exc.strerror}") from None
    try:
        found = members(f, path)
        raw = manifest_bytes(f, found)
        sig_m = found["manifest.sig"]
        sig = b"".join(read_range(f, sig_m.offset, sig_m.size)) if sig_m.size <= 1024 else b""
        key = signature.verify(raw, sig, signature.keyring(policy.keyring))
        m = manifest_mod.parse(raw)
        _check_policy(m, policy)
        _check_images(f, m, found)
    except BaseException:
        f.close()
        raise
    return Verified(path, f, m, found, key)

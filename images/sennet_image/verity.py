"""dm-verity for the read-only layers: the hash tree appended to the layer, its root hash out.

`veritysetup format` (Debian's cryptsetup-bin) writes the tree after the data
(hash offset = data size), so one partition holds both and the initramfs finds
the tree from the squashfs superblock's size alone. The salt and the verity
UUID, which veritysetup would otherwise randomise, are derived from the data's
sha256, so the same layer gives the same bytes and the same root hash every
build. The root hash goes on the UKI's command line (`sennet.verity.<role>=`),
which Secure Boot covers with the signature of the UKI: that is the trust anchor.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from sennet_image.disk import derived_uuid
from sennet_image.fsutil import sha256_file
from sennet_image.proc import die, run

BLOCK = 4096
ROLES = ("root", "agent")  # the layers the initramfs opens through dm-verity
_ROOT_HASH = re.compile(r"^Root hash:\s+([0-9a-f]{64})$", re.MULTILINE)


def salt_and_uuid(data_sha256: str) -> tuple[str, str]:
    """The salt (hex) and verity UUID for a layer whose data has this sha256."""
    salt = hashlib.sha256(f"sennet-verity-salt\0{data_sha256}".encode()).hexdigest()
    return salt, derived_uuid("sennet-verity-uuid", data_sha256).lower()


def format_layer(image: Path) -> str:
    """Append the verity superblock and hash tree to `image` in place; return the root hash.

    The data must be whole 4 KiB blocks (mksquashfs pads to 4 KiB; a layer that
    is not is a build bug, not something to paper over)."""
    size = image.stat().st_size
    if size == 0 or size % BLOCK:
        die(f"{image.name}: {size} bytes is not a whole number of {BLOCK}-byte verity blocks")
    salt, uuid = salt_and_uuid(sha256_file(image))
    out = run(
        [
            "veritysetup",
            "format",
            "--hash=sha256",
            f"--data-block-size={BLOCK}",
            f"--hash-block-size={BLOCK}",
            f"--data-blocks={size // BLOCK}",
            f"--hash-offset={size}",
            f"--salt={salt}",
            f"--uuid={uuid}",
            image,
            image,
        ]
    ).stdout.decode()
    m = _ROOT_HASH.search(out)
    if m is None:
        die(f"veritysetup format of {image.name} printed no root hash", hint=out[-500:])
    return m.group(1)


def squashfs_bytes(image: Path) -> int:
    """Bytes of the squashfs at the start of `image` (its superblock's bytes_used)."""
    with image.open("rb") as f:
        head = f.read(96)
    if len(head) < 96 or head[:4] != b"hsqs":
        die(f"{image}: not a squashfs layer (no hsqs superblock)")
    used = int.from_bytes(head[40:48], "little")
    if used > image.stat().st_size:
        die(f"{image}: squashfs of {used} bytes in a {image.stat().st_size}-byte file (truncated)")
    return used


def reformat_layer(image: Path, out: Path) -> str:
    """`out` = the squashfs of `image` (a layer with or without a tree), zero-padded to whole
    blocks as mksquashfs pads it, with its own tree appended; return the root hash. The salt
    and UUID follow the data, so a build's layer comes out byte for byte as the build made
    it, and a plain squashfs gets the tree the build would have given it."""
    left = squashfs_bytes(image)
    with image.open("rb") as src, out.open("wb") as dst:
        while left:
            chunk = src.read(min(left, 1 << 20))
            dst.write(chunk)
            left -= len(chunk)
        dst.write(bytes(-dst.tell() % BLOCK))
    return format_layer(out)


def cmdline_args(root_hashes: dict[str, str]) -> str:
    """`sennet.verity.root=HEX sennet.verity.agent=HEX` for the kernel command line."""
    missing = [r for r in ROLES if r not in root_hashes]
    if missing:
        die(f"no verity root hash for layer(s) {', '.join(missing)}")
    return " ".join(f"sennet.verity.{r}={root_hashes[r]}" for r in ROLES)


def read_root_hash(path: Path) -> str:
    """A `<layer>.roothash` file written by the layer step: one hex line, checked."""
    text = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        die(f"{path}: not a sha256 root hash (64 hex digits)")
    return text

"""Bundles, keys and a fake device for the updater's host tests, made with the real openssl.

Keys are fresh Ed25519 pairs from `openssl genpkey`; manifests are signed with
`openssl pkeyutl -sign -rawin`, the same calls `images/make-bundle` makes. The
"device" is files standing in for the slot partitions (zero-filled, fixed size)
and a directory standing in for the ESP: the only parts that cannot be real on
a host (the VM suite covers the real disk and firmware).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from sennet.update.device import Device

COMPATIBLE = "sennet-appliance/x86_64/test"
PART_BYTES = 4 * 1024 * 1024
MEMBER_ORDER = ("uki-a", "uki-b", "root", "agent")


def make_key(directory: Path, name: str) -> tuple[Path, Path]:
    """(private key, public key PEM) of a fresh Ed25519 pair."""
    directory.mkdir(parents=True, exist_ok=True)
    key, pub = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True)
    return key, pub


def sign(key: Path, data: bytes, workdir: Path) -> bytes:
    src, sig = workdir / "to-sign", workdir / "sig"
    src.write_bytes(data)
    subprocess.run(
        [
            "openssl",
            "pkeyutl",
            "-sign",
            "-inkey",
            str(key),
            "-rawin",
            "-in",
            str(src),
            "-out",
            str(sig),
        ],
        check=True,
    )
    return sig.read_bytes()


@dataclass
class Images:
    """Distinct, recognisable contents per image (sizes not multiples of the chunk)."""

    version: str = "0.2.0"
    sizes: dict[str, int] = field(
        default_factory=lambda: {
            "uki-a": 70_001,
            "uki-b": 70_003,
            "root": 1_500_007,
            "agent": 300_011,
        }
    )

    def content(self, name: str) -> bytes:
        seed = hashlib.sha256(f"{name}-{self.version}".encode()).digest()
        size = self.sizes[name]
        return (seed * (size // len(seed) + 1))[:size]


def manifest(images: Images, **override: object) -> dict[str, object]:
    data: dict[str, object] = {
        "format": "sennet-bundle/1",
        "compatible": COMPATIBLE,
        "version": images.version,
        "image_digest": hashlib.sha256(b"digest-" + images.version.encode()).hexdigest(),
        "min_from_version": "0.1.0",
        "images": {
            n: {
                "sha256": hashlib.sha256(images.content(n)).hexdigest(),
                "size": images.sizes[n],
            }
            for n in MEMBER_ORDER
        },
    }
    data.update(override)
    return data


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def make_bundle(
    path: Path,
    key: Path,
    images: Images | None = None,
    member_data: dict[str, bytes] | None = None,
    **override: object,
) -> Path:
    """A signed bundle; `member_data` replaces a member's bytes after signing (tampering)."""
    images = images or Images()
    raw = json.dumps(manifest(images, **override), sort_keys=True).encode()
    sig = sign(key, raw, path.parent)
    members = [("manifest.json", raw), ("manifest.sig", sig)]
    members += [
        (f"{n}.{'efi' if n.startswith('uki') else 'img'}", images.content(n)) for n in MEMBER_ORDER
    ]
    for name, data in (member_data or {}).items():
        members = [(n, data if n == name else d) for n, d in members]
    return write_tar(path, members)


def fake_device(root: Path, keyring: Path, slot: str = "a", version: str = "0.1.0") -> Device:
    """Slot partitions as zero-filled files, the ESP as a directory with slot a's committed UKI."""
    parts = root / "parts"
    parts.mkdir(parents=True)
    table = []
    for role in ("root-a", "agent-a", "root-b", "agent-b"):
        (parts / role).write_bytes(bytes(PART_BYTES))
        table.append(f"{role.replace('-', '_')}={parts / role}")  # as the initramfs writes it
    (root / "partitions").write_text("\n".join(table) + "\n")
    esp_dir = root / "esp" / "EFI" / "Linux"
    esp_dir.mkdir(parents=True)
    (esp_dir / "sennet-a-0.1.0.efi").write_bytes(b"uki of slot a, version 0.1.0")
    dev = Device(
        esp=root / "esp",
        state_dir=root / "state" / "update",
        agent_dir=root / "state" / "agent",
        keyring=keyring,
        partitions=root / "partitions",
        image_env=root / "image.env",
        cmdline=root / "cmdline",
        sys_block=root / "no-sys-block",
        boot_id=root / "boot_id",
        agent_exits=root / "agent-exits",
        compatible=COMPATIBLE,
    )
    boot_as(dev, slot, version)
    (root / "boot_id").write_text("11111111-2222-3333-4444-555555555555\n")
    return dev


def boot_as(dev: Device, slot: str, version: str) -> None:
    """What rc.boot writes from the booted UKI's command line."""
    dev.image_env.write_text(
        f"SENNET_SLOT={slot}\nSENNET_IMAGE_VERSION={version}\nSENNET_IMAGE_DIGEST={'0' * 64}\n"
    )


def entry_names(dev: Device) -> list[str]:
    return sorted(p.name for p in (dev.esp / "EFI" / "Linux").iterdir())


def all_zero(path: Path) -> bool:
    return path.read_bytes() == bytes(path.stat().st_size)

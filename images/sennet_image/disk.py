"""Boot artefacts: the unified kernel images, the EFI system partition and the GPT disk.

No loop devices and no root: `objcopy` builds each UKI on systemd-boot's stub
(Debian 12 has no ukify), `mkfs.fat` + mtools fill the ESP inside a file,
`sfdisk` partitions a file. Every identifier that tools would randomise (FAT
volume id, disk GUID) is derived from the content's sha256.

Partitions are found at boot by their unique GPT GUIDs, not by name: `layout()`
derives each variant's GUIDs from (variant, role, slot) only, so they stay the
same from one version to the next (a new version's initramfs finds the slots
an older one wrote). The initramfs of a variant carries them
(`partition_table()`) and `build_disk` writes the same GUIDs. A production
initramfs knows no test partition at all, and the test image's partitions
(other GUIDs) are strangers to it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from sennet_image import signing
from sennet_image.fsutil import sha256_file
from sennet_image.proc import die, run, source_date_epoch, step

EFI_DIR = "usr/lib/systemd/boot/efi"


def efi_binary(name: str) -> Path:
    """systemd-boot-efi's `name` (the UKI stub, systemd-boot): from the build root when the
    build runs in one (read when used, so it does not matter when this module was imported),
    else the host's; SENNET_EFI_STUB / SENNET_SYSTEMD_BOOT name another file."""
    override = {
        "linuxx64.efi.stub": "SENNET_EFI_STUB",
        "systemd-bootx64.efi": "SENNET_SYSTEMD_BOOT",
    }
    explicit = os.environ.get(override[name], "")
    if explicit:
        return Path(explicit)
    root = os.environ.get("SENNET_BUILD_ROOT", "")
    return Path(root or "/") / EFI_DIR / name


MIB = 1 << 20
# Fixed sizes, so every version's layers land at the same offsets. Measured (0.1.0): UKI
# 9.8 MiB, root layer 38.1 MiB, agent layer 0.33 MiB, test layer 2.2 MiB. The ESP holds
# systemd-boot, two UKIs and, while an update writes, a third; the slots ~1.5x the layers.
ESP_MIB = 48
ROOT_SLOT_MIB = 60
AGENT_SLOT_MIB = 4
TEST_MIB = 4
# room for an offered bundle (its slot images: ~50 MiB today, up to ~90) beside the state
STATE_MIB = 192
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # Linux root (x86-64)
DATA_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"  # Linux filesystem data
# cryptomgr.notests: the kernel's crypto self-tests (a check that each implementation the
# kernel registers computes right, not a defence against anything) took 1.07 s of every
# boot under TCG (initcall_debug: crypto_algapi_init). A kernel booted with fips=1 runs
# them regardless.
DEFAULT_CMDLINE = "console=ttyS0,115200 quiet panic=10 cryptomgr.notests=1"


VARIANTS = ("production", "test")
# Roles the boot looks up, in the order the partitions sit on the disk.
ROLES = ("esp", "root-a", "agent-a", "root-b", "agent-b", "test", "state")
PARTITION_NAMES = {
    "esp": "esp",
    "root-a": "sennet-root-a",
    "agent-a": "sennet-agent-a",
    "root-b": "sennet-root-b",
    "agent-b": "sennet-agent-b",
    "test": "sennet-test",
    "state": "sennet-state",
}


@dataclass(frozen=True)
class Partition:
    """One GPT partition: its name (a label for people), type, content file, unique GUID."""

    name: str
    type_guid: str
    content: Path | None  # None: left zeroed
    size_mib: int
    uuid: str = ""  # "" = derived from the name and content (partitions nobody looks up)


def derived_uuid(*parts: str) -> str:
    """A stable UUID from strings (content hashes, names): same inputs, same GUID."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4)).upper()


def layout(variant: str) -> dict[str, str]:
    """Each role's unique partition GUID for `variant`, in disk order.

    From (variant, role, slot) only: every version of a variant has the same
    GUIDs (an update writes the other slot in place), and no GUID of the test
    image equals one of production's.
    """
    if variant not in VARIANTS:
        die(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")
    roles = [r for r in ROLES if r != "test" or variant == "test"]
    return {r: derived_uuid("sennet-partition/2", variant, *r.split("-")) for r in roles}


def partition_table(uuids: dict[str, str]) -> str:
    """The initramfs's `etc/partitions`: `ROLE HEX` lines, HEX being the GUID's 16 bytes
    as GPT stores them (mixed-endian), so busybox `hexdump` of an entry compares as text."""
    return "".join(f"{role} {uuid.UUID(u).bytes_le.hex()}\n" for role, u in uuids.items())


def build_uki(vmlinuz: Path, initrd: Path, cmdline: str, osrel: str, out: Path) -> None:
    """A PE image the firmware runs directly: stub + .osrel, .cmdline, .linux, .initrd."""
    if vmlinuz.stat().st_size >= 16 * MIB:
        die(f"{vmlinuz.name} is {vmlinuz.stat().st_size} bytes; the .linux section holds < 16 MiB")
    stub = efi_binary("linuxx64.efi.stub")
    if not stub.is_file():
        die(f"EFI stub missing: {stub}", hint="apt-get install systemd-boot-efi")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cmdline").write_text(cmdline + "\0")
        (Path(tmp) / "osrel").write_text(osrel)
        run(
            [
                "objcopy",
                "--add-section",
                f".osrel={Path(tmp) / 'osrel'}",
                "--change-section-vma",
                ".osrel=0x20000",
                "--add-section",
                f".cmdline={Path(tmp) / 'cmdline'}",
                "--change-section-vma",
                ".cmdline=0x30000",
                "--add-section",
                f".linux={vmlinuz}",
                "--change-section-vma",
                ".linux=0x2000000",
                "--add-section",
                f".initrd={initrd}",
                "--change-section-vma",
                ".initrd=0x3000000",
                stub,
                out,
            ]
        )
    pe_set_timestamp(out, source_date_epoch())


def pe_set_timestamp(path: Path, epoch: int) -> None:
    """objcopy stamps the PE header with the current time; put the fixed epoch there and
    recompute the optional header's checksum, so two builds give the same bytes."""
    data = bytearray(path.read_bytes())
    pe = int.from_bytes(data[0x3C:0x40], "little")
    if data[pe : pe + 4] != b"PE\0\0":
        die(f"{path.name}: not a PE image")
    data[pe + 8 : pe + 12] = epoch.to_bytes(4, "little")
    csum_at = pe + 24 + 64
    data[csum_at : csum_at + 4] = b"\0\0\0\0"
    total = 0
    padded = data + b"\0" * (len(data) % 2)
    for (word,) in struct.iter_unpack("<H", padded):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    data[csum_at : csum_at + 4] = ((total & 0xFFFF) + len(data)).to_bytes(4, "little")
    path.write_bytes(bytes(data))


# systemd-boot's configuration: boot the first entry at once (no menu unless a key is held),
# no command-line editor (the UKI's command line is the image's), no automatic entries.
LOADER_CONF = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n"


def build_esp(ukis: dict[str, Path], out: Path, extra: dict[str, bytes] | None = None) -> None:
    """FAT16 ESP: systemd-boot as \\EFI\\BOOT\\BOOTX64.EFI, \\loader\\loader.conf, each UKI
    in `ukis` (entry file name -> file) under \\EFI\\Linux, an empty \\sennet for
    provisioning (plus `extra` files there)."""
    systemd_boot = efi_binary("systemd-bootx64.efi")
    if not systemd_boot.is_file():
        die(f"systemd-boot missing: {systemd_boot}", hint="apt-get install systemd-boot-efi")
    out.unlink(missing_ok=True)
    vol_id = derived_uuid("esp", *(f"{n} {sha256_file(u)}" for n, u in sorted(ukis.items())))[:8]
    run(
        [
            "mkfs.fat",
            "-F",
            "16",
            "-n",
            "SENNET-ESP",
            "-i",
            vol_id,
            "--invariant",
            "-C",
            out,
            str(ESP_MIB * 1024),
        ]
    )
    env = {"MTOOLS_SKIP_CHECK": "1"}
    dirs = ["::/EFI", "::/EFI/BOOT", "::/EFI/Linux", "::/loader", "::/sennet"]
    run(["mmd", "-i", out, *dirs], env=env)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "BOOTX64.EFI"
        shutil.copyfile(systemd_boot, staged)
        signing.sign(staged)  # Secure Boot: the firmware checks the loader, it the UKIs
        (Path(tmp) / "loader.conf").write_text(LOADER_CONF)
        files = [
            (staged, "::/EFI/BOOT/BOOTX64.EFI"),
            (Path(tmp) / "loader.conf", "::/loader/loader.conf"),
        ]
        for i, (name, uki) in enumerate(sorted(ukis.items())):
            (Path(tmp) / f"uki{i}").mkdir()
            shutil.copyfile(uki, Path(tmp) / f"uki{i}" / name)
            files.append((Path(tmp) / f"uki{i}" / name, f"::/EFI/Linux/{name}"))
        for name, data in sorted((extra or {}).items()):
            (Path(tmp) / name).write_bytes(data)
            files.append((Path(tmp) / name, f"::/sennet/{name}"))
        epoch = source_date_epoch()
        for src, dst in files:
            os.utime(src, (epoch, epoch))
            run(["mcopy", "-m", "-i", out, src, dst], env=env)


def build_disk(parts: list[Partition], out: Path) -> dict[str, int]:
    """Write a GPT disk image holding `parts`; returns each partition's byte offset."""
    offset_mib = 1
    layout = []
    for p in parts:
        if p.content is not None and p.content.stat().st_size > p.size_mib * MIB:
            die(f"{p.content.name} does not fit its {p.size_mib} MiB partition {p.name}")
        layout.append((p, offset_mib))
        offset_mib += p.size_mib
    total = (offset_mib + 1) * MIB
    hashes = [sha256_file(p.content) if p.content else p.name for p in parts]
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate(total)
    script = [
        "label: gpt",
        f"label-id: {derived_uuid('disk', *hashes)}",
        "unit: sectors",
        "first-lba: 2048",
        "",
    ]
    for (p, off), h in zip(layout, hashes, strict=True):
        script.append(
            f"start={off * 2048}, size={p.size_mib * 2048}, type={p.type_guid}, "
            f'uuid={p.uuid or derived_uuid(p.name, h)}, name="{p.name}"'
        )
    with step("partition", disk=out.name, mib=total // MIB):
        run(
            ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", out],
            input_bytes=("\n".join(script) + "\n").encode(),
        )
        with out.open("r+b") as f:
            for p, off in layout:
                if p.content is None:
                    continue
                f.seek(off * MIB)
                with p.content.open("rb") as src:
                    shutil.copyfileobj(src, f, 4 * MIB)
    return {p.name: off * MIB for p, off in layout}


def size_mib(path: Path, slack: int = 0) -> int:
    """Smallest whole MiB holding `path` plus `slack` MiB."""
    return -(-path.stat().st_size // MIB) + slack


def to_qcow2(raw: Path, out: Path) -> None:
    """The same disk as qcow2 for VMs (qemu-img writes no timestamps)."""
    out.unlink(missing_ok=True)
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out])

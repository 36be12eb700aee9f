"""The verified boot chain under QEMU (integration): Secure Boot, dm-verity, tampering.

Each tampering test changes a copy of the built disk (never the artefacts) and boots it:
a byte flipped in a data block of slot a's root or agent squashfs, a wrong or missing root
hash on the command line, slot a's UKI or systemd-boot changed after signing. A refused boot
ends at dm-verity's "block N is corrupted" and the reset it asks for (a layer), at the
initramfs's `event=fatal why=...` line (no root hash) or, for an EFI binary, at the
Secure Boot refusal (OVMF's for systemd-boot, systemd-boot's report of the firmware's
LoadImage refusal for a UKI); the console is read until one of those (or agent_ready) and
QEMU is stopped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sennet_image import boot, build, cli, qemu, slots
from sennet_image.disk import MIB

REPO = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.integration
# The end of a boot, whichever way it goes (OVMF prints "Access Denied" when the image's
# signature is not in db, systemd-boot "Access denied" when LoadImage refuses a UKI; the
# initramfs prints event=fatal; the agent event=agent_ready).
OUTCOME = re.compile(r"event=fatal .*|event=agent_ready\b.*|.*Access [Dd]enied.*")
NEVER = re.compile(r"(?!)")
# dm-verity's report of a block that does not match the signed tree, and the reset it asks
# for (the layers are opened with restart_on_corruption).
CORRUPTED = re.compile(r"device-mapper: verity: \S+: (data|metadata) block \d+ is corrupted")
RESTART = "Restarting system with command 'dm-verity device corrupted'"
LINK = ("vmlinuz", "vmlinux", "initrd.cpio", "cmdline", "appliance.raw")


def _partition_offset(raw: Path, name: str) -> int:
    table = json.loads(subprocess.run(["sfdisk", "--json", raw], capture_output=True,
                                      check=True).stdout)["partitiontable"]  # fmt: skip
    part = next(p for p in table["partitions"] if p.get("name") == name)
    return int(part["start"]) * int(table.get("sectorsize", 512))


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _tampered_copy(image_dir: Path, work: Path) -> Path:
    """A directory with the image's boot files and a writable copy of appliance.raw."""
    work.mkdir()
    for name in LINK[:-1]:
        (work / name).symlink_to(image_dir / name)
    shutil.copyfile(image_dir / "appliance.raw", work / "appliance.raw")
    return work


def _boot_until_outcome(
    disk_raw: Path, how: qemu.DirectBoot | qemu.UefiBoot, timeout: float = 240
) -> str:
    return _boot(disk_raw, how, timeout, OUTCOME)[0]


def _boot(
    disk_raw: Path,
    how: qemu.DirectBoot | qemu.UefiBoot,
    timeout: float,
    until: re.Pattern[str],
    then_s: float = 0.0,
    extra_disks: tuple[Path, ...] = (),
) -> tuple[str, int | None]:
    """The console up to `until` (or QEMU's own exit) and `then_s` seconds more, and QEMU's
    exit status if it ended by itself (-no-reboot: a guest reboot ends QEMU)."""
    overlay = disk_raw.with_suffix(".overlay.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", disk_raw,
                    overlay], check=True)  # fmt: skip
    argv = qemu.qemu_argv(
        accel=qemu.accelerator(disk_raw.parent / "vmlinuz"),
        disk=overlay,
        boot=how,
        memory_mib=512,
        smp=1,
        monitored_netdev="user,restrict=on",
        disk_cache="unsafe",
        extra_disks=extra_disks,
    )
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        console = qemu.read_until(proc, until, timeout, echo=False)
        if then_s:
            console += qemu.read_until(proc, NEVER, then_s, echo=False)
        try:
            ended = proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            ended = None
        return console, ended
    finally:
        proc.kill()
        proc.wait()


def _direct(work: Path, *extra: str) -> qemu.DirectBoot:
    cmdline = (work / "cmdline").read_text().strip()
    return qemu.direct_boot(work, " ".join([cmdline, *extra]))


def _secure(work: Path) -> qemu.UefiBoot:
    how = qemu.UefiBoot(vars_file=work / "OVMF_VARS.fd", secure_boot=True)
    shutil.copyfile(qemu.vars_template(True), how.vars_file)
    return how


def test_secure_boot_runs_the_signed_uki_and_the_verified_layers(image_dir: Path) -> None:
    args = cli.parser().parse_args(
        ["boot", "--image", str(image_dir), "--mode", "uefi", "--secure-boot",
         "--until-ready", "--timeout", "480", "--quiet"]
    )  # fmt: skip
    result = boot.boot(args)
    assert result.ready_s is not None, result.console[-3000:]
    assert result.attached == ("eth1",)
    for layer in ("root", "agent"):
        assert re.search(rf"event=verity_opened layer={layer} dev=/dev/vda\d ", result.console)
    assert "root=/dev/mapper/sennet-root agent=/dev/mapper/sennet-agent" in result.console


@pytest.mark.parametrize(("layer", "partition"), [("root", "sennet-root-a"),
                                                  ("agent", "sennet-agent-a")])  # fmt: skip
def test_a_byte_flipped_in_a_layers_data_stops_the_boot(
    image_dir: Path, tmp_path: Path, layer: str, partition: str
) -> None:
    work = _tampered_copy(image_dir, tmp_path / "img")
    size = (image_dir / f"{layer}.squashfs").stat().st_size
    data = next(p for p in [size * 9 // 10 // 4096 * 4096] if p > 0)
    raw = work / "appliance.raw"
    # a data block of the squashfs, 90% in: file contents, not read by mount itself
    _flip(raw, _partition_offset(raw, partition) + data + 100)
    # Read until QEMU ends: the block is checked when first read (by whatever reads it at
    # boot, or at the latest by verity-scan), and dm-verity resets the machine there.
    console, ended = _boot(raw, _direct(work), 420, NEVER)
    assert re.search(CORRUPTED, console), console[-3000:]
    assert RESTART in console.split("is corrupted", 1)[1], console[-3000:]
    assert ended == 0, f"QEMU did not end by the guest's reset: {ended}"
    assert f"event=verity_scan_ok layer={layer}" not in console


def test_a_wrong_or_missing_root_hash_on_the_command_line_stops_the_boot(
    image_dir: Path, tmp_path: Path
) -> None:
    work = _tampered_copy(image_dir, tmp_path / "img")
    raw = work / "appliance.raw"
    # Read to the end: a stopped boot resets by itself (here QEMU's -no-reboot ends it), so
    # a trial slot that fails here goes back to systemd-boot, which counts the try.
    wrong, ended = _boot(raw, _direct(work, "sennet.verity.root=" + "ab" * 32), 240, NEVER)
    assert re.search(CORRUPTED, wrong), wrong[-3000:]  # the first read: mount's superblock
    assert ended == 0, f"QEMU did not end by the guest's reset: {ended}"
    missing, ended = _boot(raw, _direct(work, "sennet.verity.agent="), 240, NEVER)
    assert "event=fatal why=verity_no_root_hash layer=agent" in missing, missing[-3000:]
    assert "event=rebooting in_s=10" in missing.split("event=fatal", 1)[1], missing[-3000:]
    assert ended == 0, f"QEMU did not end by the guest's reboot: {ended}"
    # A developer's direct boot may ask for a shell instead: nothing reboots, QEMU stays up.
    shell, ended = _boot(
        raw, _direct(work, "sennet.verity.agent=", "sennet.on_fatal=shell"), 240, OUTCOME, 13
    )
    assert "event=fatal why=verity_no_root_hash layer=agent" in shell, shell[-3000:]
    assert "event=rebooting" not in shell
    assert ended is None
    for console in (wrong, missing, shell):
        assert "event=root_mounted" not in console


def test_a_second_disk_holding_this_builds_partition_guids_stops_the_boot(
    image_dir: Path, tmp_path: Path
) -> None:
    """Two devices with one role's GUID (a second copy of the image plugged in): which one
    to trust is not the initramfs's guess. It names the first role listed and both devices."""
    work = _tampered_copy(image_dir, tmp_path / "img")
    console, ended = _boot(
        work / "appliance.raw",
        _direct(work, "sennet.on_fatal=shell"),
        240,
        OUTCOME,
        extra_disks=(image_dir / "appliance.raw",),
    )
    assert "event=fatal why=duplicate_partition role=esp devs=/dev/vda1,/dev/vdb1" in console, (
        console[-3000:]
    )
    assert "event=partitions_found" not in console
    assert ended is None


def _replace_on_esp(raw: Path, data: bytes, esp_path: str, tmp: Path) -> None:
    """Write `data` over the ESP file `esp_path` (mtools on the raw disk, ESP at 1 MiB)."""
    (tmp / "replacement.efi").write_bytes(data)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(["mcopy", "-o", "-i", f"{raw}@@{MIB}", tmp / "replacement.efi", esp_path],
                   check=True, env=env)  # fmt: skip


def test_a_uki_changed_after_signing_is_refused_by_the_firmware(
    image_dir: Path, tmp_path: Path
) -> None:
    """systemd-boot (signed, accepted) picks slot a's entry; the firmware's LoadImage
    checks that UKI against db and refuses it, so no kernel starts."""
    work = _tampered_copy(image_dir, tmp_path / "img")
    raw = work / "appliance.raw"
    data = (image_dir / "uki-a.efi").read_bytes()
    at = data.index(b"console=ttyS0")  # the .cmdline section: what an attacker would change
    data = data[:at] + b"console=ttyS1" + data[at + len(b"console=ttyS0") :]
    version = build.read_identity(image_dir / "image.json").version
    _replace_on_esp(raw, data, f"::/EFI/Linux/{slots.entry_name('a', version)}", tmp_path)
    console = _boot_until_outcome(raw, _secure(work))
    assert re.search(r"Access [Dd]enied", console), console[-3000:]
    assert "sennet-initramfs" not in console
    assert "event=agent_ready" not in console


def test_systemd_boot_changed_after_signing_is_refused_by_the_firmware(
    image_dir: Path, tmp_path: Path
) -> None:
    """The first link: BOOTX64.EFI (systemd-boot) with one byte of its code changed."""
    work = _tampered_copy(image_dir, tmp_path / "img")
    raw = work / "appliance.raw"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    loader = subprocess.run(["mtype", "-i", f"{raw}@@{MIB}", "::/EFI/BOOT/BOOTX64.EFI"],
                            capture_output=True, check=True, env=env).stdout  # fmt: skip
    at = loader.index(b"systemd-boot")  # a string in its data: the code still runs unsigned
    tampered = loader[:at] + b"Systemd-boot" + loader[at + len(b"systemd-boot") :]
    _replace_on_esp(raw, tampered, "::/EFI/BOOT/BOOTX64.EFI", tmp_path)
    console = _boot_until_outcome(raw, _secure(work))
    assert "Access Denied" in console, console[-3000:]
    assert "sennet-initramfs" not in console
    assert "event=agent_ready" not in console

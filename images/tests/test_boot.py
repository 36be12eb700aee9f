"""Boot the built image under QEMU and check the agent attached (integration: ~1 min each).

Uses the artefacts in $SENNET_IMAGE_DIR, else build/image (images/build), else
bazel-bin/images. TCG unless the KVM probe succeeds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from sennet_image import boot, bundle, cli

REPO = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.integration


def _boot(image_dir: Path, *extra: str, timeout: int = 110) -> boot.BootResult:
    args = cli.parser().parse_args(
        [
            *("boot", "--image", str(image_dir), "--until-ready", "--quiet"),
            *("--timeout", str(timeout), *extra),
        ]
    )
    return boot.boot(args)


def _mounted_through_verity(console: str, slot: str) -> None:
    """The slot's raw partitions were opened through dm-verity and the mapped devices mounted."""
    root, agent = {"a": ("/dev/vda2", "/dev/vda3"), "b": ("/dev/vda4", "/dev/vda5")}[slot]
    assert f"event=verity_opened layer=root dev={root} " in console
    assert f"event=verity_opened layer=agent dev={agent} " in console
    mounted = "root=/dev/mapper/sennet-root agent=/dev/mapper/sennet-agent test=none"
    assert f"event=root_mounted {mounted} slot={slot} " in console


def test_direct_boot_attaches_the_agent_to_the_monitored_nic_and_hides_the_token(
    image_dir: Path,
) -> None:
    result = _boot(image_dir, "--control-plane", "10.0.2.2:7443", "--bootstrap-token", "tok-s3cret")
    assert result.ready_s is not None, result.console[-3000:]
    assert result.attached == ("eth1",)
    # the build made the state partition's ext4 (with its journal): nothing to format
    assert "sennet-init: event=state_mounted dev=/dev/vda6" in result.console
    assert "event=state_format" not in result.console
    # direct boot: the cmdline artefact names slot a and this build's identity
    ident = json.loads((image_dir / "image.json").read_text())
    assert f"sennet-init: event=image slot=a version={ident['version']}" in result.console
    _mounted_through_verity(result.console, "a")
    assert (
        "event=provisioned source=cmdline key=control_plane value=10.0.2.2:7443" in result.console
    )
    assert "event=provisioned source=cmdline key=bootstrap_token value=(set)" in result.console
    assert "control_plane=10.0.2.2:7443" in result.console.split("event=agent_ready", 1)[1]
    assert "tok-s3cret" not in result.console


def test_uefi_boot_from_the_raw_disk_takes_provisioning_from_the_esp(
    image_dir: Path, tmp_path: Path
) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        'interfaces = ["eth1"]\nbpf_dir = "/opt/sennet/bpf"\n'
        'control_plane = "10.0.2.2:9443"\nmetrics_listen = ""\n'
    )
    result = _boot(image_dir, "--mode", "uefi", "--provision", str(conf))
    assert result.ready_s is not None, result.console[-3000:]
    assert result.attached == ("eth1",)
    assert "event=provisioned source=esp:sennet/agent.toml" in result.console
    ready = result.console.split("event=agent_ready", 1)[1].splitlines()[0]
    assert "control_plane=10.0.2.2:9443" in ready and "metrics=off" in ready
    # systemd-boot chose slot a's UKI, the only entry of the factory image
    _mounted_through_verity(result.console, "a")


def _esp_entries(disk: Path, work: Path) -> list[str]:
    """The file names in the ESP's \\EFI\\Linux of a qcow2 disk (with its backing chain)."""
    raw = work / "esp-view.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
    out = subprocess.run(
        ["mdir", "-b", "-i", f"{raw}@@{1 << 20}", "::/EFI/Linux"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout
    raw.unlink()
    return sorted(line.rsplit("/", 1)[-1] for line in out.split())


def test_uefi_boots_a_trial_slot_while_it_has_tries_then_the_committed_one(
    image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an update leaves behind, made by hand: slot b holds the layers and its UKI
    (version 0.2.0, from make-bundle) as a trial entry with one try. systemd-boot boots it
    once, counting the try in its file name; with no try left, slot a boots by itself.

    Each boot stops at rc.boot's boot_done (the slot is chosen and mounted by then; the
    agent's start is what the boots above check), and QEMU is stopped without a guest
    shutdown: only the ESP's file names matter to the next boot."""
    monkeypatch.setattr(boot, "READY", re.compile(r"event=boot_done\b"))
    ident = json.loads((image_dir / "image.json").read_text())
    work = tmp_path / "image"
    work.mkdir()
    raw = work / "appliance.raw"
    shutil.copyfile(image_dir / "appliance.raw", raw)
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, check=True).stdout
    )["partitiontable"]["partitions"]
    start = {p["name"]: p["start"] * 512 for p in table}
    with raw.open("r+b") as disk:
        for part, layer in (("sennet-root-b", "root"), ("sennet-agent-b", "agent")):
            disk.seek(start[part])
            disk.write((image_dir / f"{layer}.squashfs").read_bytes())
        # and a state partition wiped in the field: the first boot formats it again
        disk.seek(start["sennet-state"])
        disk.write(bytes(64 << 10))
    bundle.make(image_dir, tmp_path / "u.bundle", key=bundle.DEV_KEY, version="0.2.0")
    with tarfile.open(tmp_path / "u.bundle") as tar:
        member = tar.extractfile("uki-b.efi")
        assert member is not None
        (tmp_path / "uki-b.efi").write_bytes(member.read())
    subprocess.run(
        ["mcopy", "-i", f"{raw}@@{start['esp']}", str(tmp_path / "uki-b.efi"),
         "::/EFI/Linux/sennet-b-0.2.0+1-0.efi"],
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )  # fmt: skip
    qcow2 = work / "appliance.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True)
    raw.unlink()
    (work / "vmlinuz").symlink_to(image_dir / "vmlinuz")
    state = tmp_path / "state.qcow2"

    # two UEFI boots under TCG on a shared machine: more time than the single boots above
    trial = _boot(work, "--mode", "uefi", "--state", str(state), timeout=300)
    assert trial.ready_s is not None, trial.console[-3000:]
    _mounted_through_verity(trial.console, "b")
    assert "sennet-init: event=image slot=b version=0.2.0" in trial.console
    assert "sennet-init: event=state_format dev=/dev/vda6 first_boot=1" in trial.console
    committed = f"sennet-a-{ident['version']}.efi"
    assert _esp_entries(state, tmp_path) == sorted([committed, "sennet-b-0.2.0+0-1.efi"])

    fallback = _boot(work, "--mode", "uefi", "--state", str(state), timeout=300)
    assert fallback.ready_s is not None, fallback.console[-3000:]
    _mounted_through_verity(fallback.console, "a")
    assert f"sennet-init: event=image slot=a version={ident['version']}" in fallback.console
    assert "sennet-init: event=state_mounted dev=/dev/vda6" in fallback.console
    assert "event=state_format" not in fallback.console  # formatted once, kept
    # an entry with no tries left is not booted, and not counted any further
    assert _esp_entries(state, tmp_path) == sorted([committed, "sennet-b-0.2.0+0-1.efi"])

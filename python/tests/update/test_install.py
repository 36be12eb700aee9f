"""install: what lands on the slot files and the ESP directory, and what a refusal leaves."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from sennet.update import slots
from sennet.update.device import Device
from sennet.update.errors import Refused, UpdateFailed
from sennet.update.install import Settings, install
from sennet.update.state import Store
from tests.update.bundles import Images, all_zero, entry_names, make_bundle
from tests.update.conftest import Keys


def part(dev: Device, role: str) -> Path:
    path = slots.device(role, dev.partitions)
    assert path is not None
    return path


def test_install_writes_the_inactive_slot_and_a_trial_entry(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    images = Images()
    entry = install(device, Settings(tries=2), make_bundle(tmp_path / "b.bundle", keys.good))
    assert entry.name == "sennet-b-0.2.0+2-0.efi"
    assert entry_names(device) == ["sennet-a-0.1.0.efi", "sennet-b-0.2.0+2-0.efi"]
    assert entry.read_bytes() == images.content("uki-b")  # slot b's UKI, not slot a's
    for image in ("root", "agent"):
        data = part(device, f"{image}-b").read_bytes()
        size = images.sizes[image]
        assert data[:size] == images.content(image)
        assert data[size:] == bytes(len(data) - size)
        assert all_zero(part(device, f"{image}-a"))  # the running slot is never touched
    assert (device.esp / "EFI/Linux/sennet-a-0.1.0.efi").read_bytes() == (
        b"uki of slot a, version 0.1.0"
    )
    store = Store(device.state_dir)
    assert store.trial() | {"at": ""} == {
        "slot": "b",
        "from_slot": "a",
        "from_version": "0.1.0",
        "to_version": "0.2.0",
        "at": "",
    }
    status = store.status()
    assert (status["booted_slot"], status["active_slot"], status["version"]) == ("a", "a", "0.1.0")
    assert oct(store.status_path.stat().st_mode & 0o777) == "0o644"


def test_from_slot_b_the_update_goes_to_slot_a(tmp_path: Path, keys: Keys, device: Device) -> None:
    device.image_env.write_text("SENNET_SLOT=b\nSENNET_IMAGE_VERSION=0.2.0\n")
    bundle = make_bundle(tmp_path / "b.bundle", keys.good, images=Images(version="0.3.0"))
    entry = install(device, Settings(tries=3), bundle)
    assert entry.name == "sennet-a-0.3.0+3-0.efi"
    assert entry.read_bytes() == Images(version="0.3.0").content("uki-a")


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"key": "stranger"}, "signature"),
        ({"member_data": {"root.img": b"x" * 1_500_007}}, "digest"),
        ({"images": Images(version="0.0.9")}, "downgrade"),
        ({"compatible": "sennet-appliance/x86_64/production"}, "incompatible"),
    ],
)
def test_a_refusal_writes_nothing_and_is_recorded(
    tmp_path: Path, keys: Keys, device: Device, kwargs: dict[str, object], reason: str
) -> None:
    key = keys.stranger if kwargs.pop("key", None) else keys.good
    bundle = make_bundle(tmp_path / "b.bundle", key, **kwargs)  # type: ignore[arg-type]
    before = {p.name: p.stat().st_mtime_ns for p in (device.esp / "EFI/Linux").iterdir()}
    with pytest.raises(Refused) as info:
        install(device, Settings(min_version="0.1.0"), bundle)
    assert info.value.reason == reason
    assert entry_names(device) == ["sennet-a-0.1.0.efi"]
    assert {p.name: p.stat().st_mtime_ns for p in (device.esp / "EFI/Linux").iterdir()} == before
    for role in ("root-a", "agent-a", "root-b", "agent-b"):
        assert all_zero(part(device, role)), role
    last = Store(device.state_dir).status()["last_outcome"]
    assert (last["result"], last["reason"], last["from_version"]) == ("refused", reason, "0.1.0")
    assert not Store(device.state_dir).trial_path.exists()


def test_an_image_larger_than_its_partition_is_refused(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    big = Images(sizes={"uki-a": 10, "uki-b": 10, "root": 5 * 1024 * 1024, "agent": 10})
    with pytest.raises(Refused) as info:
        install(device, Settings(), make_bundle(tmp_path / "b.bundle", keys.good, images=big))
    assert info.value.reason == "too_large"
    assert (
        info.value.detail
        == f"root is 5242880 bytes, root-b ({part(device, 'root-b')}) holds 4194304"
    )
    assert all_zero(part(device, "root-b"))


def test_an_old_entry_of_the_inactive_slot_goes_before_the_write(
    tmp_path: Path, keys: Keys, device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk I/O error on the agent partition, after root was written (injected: a host
    file cannot be made to fail with EIO; the real partition write is in the VM suite)."""
    stale = device.esp / "EFI/Linux/sennet-b-0.0.5.efi"
    stale.write_bytes(b"old slot b")
    real_write = slots.write_image

    def failing(path: Path, chunks: Iterable[bytes], sha256: str, size: int) -> None:
        if path.name == "agent-b":
            raise OSError(errno.EIO, "Input/output error", str(path))
        real_write(path, chunks, sha256, size)

    monkeypatch.setattr(slots, "write_image", failing)
    with pytest.raises(UpdateFailed):
        install(device, Settings(), make_bundle(tmp_path / "b.bundle", keys.good))
    assert entry_names(device) == ["sennet-a-0.1.0.efi"]  # neither old nor new b is bootable
    assert not all_zero(part(device, "root-b"))  # it got as far as writing root
    last = Store(device.state_dir).status()["last_outcome"]
    assert last["result"] == "failed"
    assert last["reason"].startswith("write_failed: [Errno 5] Input/output error")


def test_killed_while_writing_leaves_no_bootable_entry(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    """A real SIGKILL of the installing process mid-write (the power cut of the VM suite)."""
    (device.esp / "EFI/Linux/sennet-b-0.0.5.efi").write_bytes(b"old slot b")
    big = Images(sizes={"uki-a": 10, "uki-b": 10, "root": 4 * 1024 * 1024 - 7, "agent": 10})
    bundle = make_bundle(tmp_path / "b.bundle", keys.good, images=big)
    root_b = part(device, "root-b")
    cmd = [sys.executable, "-m", "sennet.update.cli", "--config", str(tmp_path / "agent.toml")]
    cmd += [f"--esp={device.esp}", f"--state-dir={device.state_dir}", f"--keyring={keys.keyring}"]
    cmd += [f"--partitions={device.partitions}", f"--image-env={device.image_env}"]
    cmd += [f"--compatible={device.compatible}", "install", str(bundle)]
    (tmp_path / "agent.toml").write_text("")
    fd = os.open(root_b, os.O_RDONLY)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while os.pread(fd, 16, 0) == bytes(16) and time.monotonic() < deadline:
            pass  # until the first bytes of root-b are written
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        os.close(fd)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = root_b.read_bytes()
    assert written[:16] != bytes(16)  # it was killed after writing began
    assert entry_names(device) == ["sennet-a-0.1.0.efi"]  # the half-written slot has no entry
    # and a fresh install afterwards completes
    entry = install(device, Settings(), bundle)
    assert entry.name == "sennet-b-0.2.0+2-0.efi"
    assert hashlib.sha256(root_b.read_bytes()[: big.sizes["root"]]).hexdigest() == (
        hashlib.sha256(big.content("root")).hexdigest()
    )

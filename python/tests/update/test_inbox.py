"""Bundles the agent dropped: taken into root's spool as data only, applied at their time."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from sennet.update import daemon, inbox
from sennet.update.device import Device
from sennet.update.install import Settings
from sennet.update.state import Store
from tests.update.bundles import Images, entry_names, make_bundle
from tests.update.conftest import Keys


def drop(dev: Device, bundle: Path, apply_at: object, name: str | None = None) -> str:
    dev.inbox.mkdir(parents=True, exist_ok=True)
    sha = name or hashlib.sha256(bundle.read_bytes()).hexdigest()
    (dev.inbox / f"{sha}.bundle").write_bytes(bundle.read_bytes())
    (dev.inbox / f"{sha}.request.json").write_text(json.dumps({"apply_at": apply_at}))
    return sha


class Reboots:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_a_request_for_now_is_installed_and_rebooted_into(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    sha = drop(device, make_bundle(tmp_path / "b.bundle", keys.good), "now")
    reboots = Reboots()
    assert daemon.apply_due(device, Settings(), reboots) is True
    assert reboots.count == 1
    assert entry_names(device) == ["sennet-a-0.1.0.efi", "sennet-b-0.2.0+2-0.efi"]
    assert sorted(p.name for p in device.inbox.iterdir()) == []  # taken
    assert sorted(p.name for p in device.spool.iterdir()) == []  # and done with
    assert len(sha) == 64


def test_a_request_outside_its_window_waits_in_the_spool(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    hour = time.gmtime().tm_hour
    window = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"
    sha = drop(device, make_bundle(tmp_path / "b.bundle", keys.good), window)
    assert daemon.apply_due(device, Settings(), Reboots()) is False
    assert entry_names(device) == ["sennet-a-0.1.0.efi"]
    assert (device.spool / f"{sha}.apply_at").read_text() == window
    assert [s.apply_at for s in inbox.waiting(device.spool)] == [window]


def test_a_bundle_not_matching_its_name_is_rejected(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    drop(device, make_bundle(tmp_path / "b.bundle", keys.good), "now", name="ab" * 32)
    taken, rejected = inbox.take(device.inbox, device.spool)
    assert (taken, rejected) == ([], [f"{'ab' * 32}.request.json"])
    assert list(device.inbox.iterdir()) == []
    assert list(device.spool.glob("*.bundle")) == []


def test_a_linked_bundle_is_not_followed(tmp_path: Path, keys: Keys, device: Device) -> None:
    bundle = make_bundle(tmp_path / "b.bundle", keys.good)
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    device.inbox.mkdir(parents=True)
    (device.inbox / f"{sha}.bundle").symlink_to(bundle)
    (device.inbox / f"{sha}.request.json").write_text('{"apply_at": "now"}')
    assert inbox.take(device.inbox, device.spool) == ([], [f"{sha}.request.json"])
    assert bundle.exists()  # the link's target is left alone


def test_a_hard_link_to_another_file_is_not_taken(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    secret = tmp_path / "roots-file"
    secret.write_bytes(b"root's data")
    sha = hashlib.sha256(b"root's data").hexdigest()
    device.inbox.mkdir(parents=True)
    os.link(secret, device.inbox / f"{sha}.bundle")
    (device.inbox / f"{sha}.request.json").write_text('{"apply_at": "now"}')
    assert inbox.take(device.inbox, device.spool) == ([], [f"{sha}.request.json"])
    assert secret.read_bytes() == b"root's data" and secret.stat().st_nlink == 1
    assert list(device.spool.iterdir()) == []


def test_a_taken_bundle_is_roots_and_private(tmp_path: Path, keys: Keys, device: Device) -> None:
    sha = drop(device, make_bundle(tmp_path / "b.bundle", keys.good), "02:00-03:00")
    os.chown(device.inbox / f"{sha}.bundle", 990, 990)  # as the agent leaves it
    taken, _ = inbox.take(device.inbox, device.spool)
    st = taken[0].bundle.stat()
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (0, 0, "0o600")


def test_a_refused_fetched_bundle_is_recorded_and_dropped(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    old = make_bundle(tmp_path / "b.bundle", keys.good, images=Images(version="0.0.9"))
    drop(device, old, "now")
    reboots = Reboots()
    assert daemon.apply_due(device, Settings(min_version="0.1.0"), reboots) is False
    assert reboots.count == 0
    assert Store(device.state_dir).status()["last_outcome"]["reason"] == "downgrade"
    assert list(device.spool.glob("*.bundle")) == []


@pytest.mark.parametrize(
    ("apply_at", "hh", "mm", "due"),
    [
        ("now", 12, 0, True),
        ("02:00-04:00", 3, 59, True),
        ("02:00-04:00", 4, 0, False),
        ("23:30-00:30", 0, 10, True),
        ("23:30-00:30", 12, 0, False),
        ("25:00-26:00", 0, 0, False),
    ],
)
def test_windows(apply_at: str, hh: int, mm: int, due: bool) -> None:
    now = time.struct_time((2026, 1, 1, hh, mm, 0, 3, 1, 0))
    assert inbox.due(apply_at, now) is due

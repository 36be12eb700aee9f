"""The state partition's file system: ext4 with a journal, the same bytes every build.

Real mke2fs (e2fsprogs) into a file; dumpe2fs (same package, not our code) reads it back.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from sennet_image import statefs

FS_UUID = "6B1C2F0E-8D3A-4E57-9A61-2C4B5D6E7F80"


def _header(image: Path) -> dict[str, str]:
    out = subprocess.run(["dumpe2fs", "-h", image], capture_output=True, check=True, text=True)
    pairs = (line.split(":", 1) for line in out.stdout.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def test_the_state_file_system_is_ext4_with_a_journal_and_fixed_identity(tmp_path: Path) -> None:
    image = tmp_path / "state.img"
    statefs.build_state(image, 64, FS_UUID)
    assert image.stat().st_size == 64 << 20
    head = _header(image)
    features = head["Filesystem features"].split()
    assert {"has_journal", "extent", "metadata_csum"} <= set(features)
    assert head["Filesystem volume name"] == "sennet-state"
    assert head["Filesystem UUID"] == FS_UUID.lower()
    assert head["Directory Hash Seed"] == FS_UUID.lower()
    assert head["Block size"] == "4096"
    assert head["Filesystem created"] == "Tue Nov 14 22:13:20 2023"  # SOURCE_DATE_EPOCH
    fsck = subprocess.run(["e2fsck", "-fn", image], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_two_builds_give_the_same_bytes(tmp_path: Path) -> None:
    first, second = tmp_path / "a.img", tmp_path / "b.img"
    statefs.build_state(first, 64, FS_UUID)
    time.sleep(1.1)  # a timestamp taken from the clock would now differ
    statefs.build_state(second, 64, FS_UUID)
    assert first.read_bytes() == second.read_bytes()

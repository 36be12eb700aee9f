"""Disk pieces: stable identifiers, fixed PE timestamp, GPT partitions found by name."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

from sennet_image import disk


def test_derived_uuid_is_stable_and_depends_on_content() -> None:
    assert disk.derived_uuid("root", "aa") == disk.derived_uuid("root", "aa")
    assert disk.derived_uuid("root", "aa") != disk.derived_uuid("root", "ab")


def test_pe_timestamp_is_set_to_the_epoch_and_checksum_is_deterministic(tmp_path: Path) -> None:
    pe = bytearray(512)
    pe[0:2] = b"MZ"
    pe[0x3C:0x40] = (0x80).to_bytes(4, "little")
    pe[0x80:0x84] = b"PE\0\0"
    pe[0x88:0x8C] = (123456).to_bytes(4, "little")
    a, b = tmp_path / "a.efi", tmp_path / "b.efi"
    a.write_bytes(bytes(pe))
    pe[0x88:0x8C] = (999999).to_bytes(4, "little")
    b.write_bytes(bytes(pe))
    for f in (a, b):
        disk.pe_set_timestamp(f, 1700000000)
    assert a.read_bytes() == b.read_bytes()
    assert struct.unpack_from("<I", a.read_bytes(), 0x88)[0] == 1700000000


def test_disk_has_named_partitions_at_the_expected_offsets(tmp_path: Path) -> None:
    content = tmp_path / "root.img"
    content.write_bytes(b"R" * 4096)
    raw = tmp_path / "d.raw"
    offsets = disk.build_disk(
        [
            disk.Partition("sennet-root", disk.ROOT_TYPE, content, 2),
            disk.Partition("sennet-state", disk.DATA_TYPE, None, 1),
        ],
        raw,
    )
    assert offsets == {"sennet-root": 1 << 20, "sennet-state": 3 << 20}
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, check=True).stdout
    )["partitiontable"]
    assert [p["name"] for p in table["partitions"]] == ["sennet-root", "sennet-state"]
    with raw.open("rb") as f:
        f.seek(1 << 20)
        assert f.read(4096) == b"R" * 4096

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


def test_partition_guids_depend_on_variant_role_and_slot_only() -> None:
    prod = disk.layout("production")
    assert prod == disk.layout("production")
    assert list(prod) == ["esp", "root-a", "agent-a", "root-b", "agent-b", "state"]
    assert list(disk.layout("test")) == [
        "esp",
        "root-a",
        "agent-a",
        "root-b",
        "agent-b",
        "test",
        "state",
    ]
    # one GUID per role: slot a's and slot b's partitions are told apart
    assert len(set(prod.values())) == len(prod)


def test_no_test_variant_guid_is_one_production_looks_for() -> None:
    prod, test_ids = disk.layout("production"), disk.layout("test")
    assert "test" not in prod
    assert set(prod.values()).isdisjoint(test_ids.values())
    assert len(set(test_ids.values())) == len(test_ids)


def test_partition_table_lists_each_guid_as_gpt_stores_it() -> None:
    table = disk.partition_table({"root": "00112233-4455-6677-8899-AABBCCDDEEFF"})
    # GPT keeps the first three fields little-endian
    assert table == "root 33221100554477668899aabbccddeeff\n"


def test_disk_partitions_carry_the_guids_the_initramfs_looks_for(tmp_path: Path) -> None:
    root = tmp_path / "root.squashfs"
    root.write_bytes(b"root" * 100)
    ids = disk.layout("production")
    raw = tmp_path / "d.raw"
    disk.build_disk(
        [
            disk.Partition("sennet-root-a", disk.ROOT_TYPE, root, 1, ids["root-a"]),
            disk.Partition("sennet-root-b", disk.ROOT_TYPE, None, 1, ids["root-b"]),
            disk.Partition("sennet-state", disk.DATA_TYPE, None, 1, ids["state"]),
        ],
        raw,
    )
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, check=True).stdout
    )["partitiontable"]
    assert [p["uuid"] for p in table["partitions"]] == [ids["root-a"], ids["root-b"], ids["state"]]
    # the on-disk bytes of entry 1's and 2's unique GUIDs are what etc/partitions lists
    with raw.open("rb") as f:
        f.seek(1024 + 16)
        guid_a = f.read(16).hex()
        f.seek(1024 + 128 + 16)
        guid_b = f.read(16).hex()
    assert f"root-a {guid_a}\n" in disk.partition_table(ids)
    assert f"root-b {guid_b}\n" in disk.partition_table(ids)

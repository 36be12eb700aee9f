"""The cpio writer and the module order."""

from __future__ import annotations

import lzma
import subprocess
from pathlib import Path

import pytest
from sennet_image import initramfs
from sennet_image.initramfs import Entry, newc
from sennet_image.proc import UserError


def _entries() -> list[Entry]:
    return [
        Entry("bin", 0o040755),
        Entry("bin/busybox", 0o100755, b"\x7fELF..."),
        Entry("bin/sh", 0o120777, b"busybox"),
        Entry("dev/console", 0o020600, rdev=(5, 1)),
    ]


def test_newc_archive_lists_entries_in_order_for_gnu_cpio(tmp_path: Path) -> None:
    archive = tmp_path / "a.cpio"
    archive.write_bytes(newc(_entries(), 1700000000))
    listing = (
        subprocess.run(
            ["cpio", "-it", "--quiet"], input=archive.read_bytes(), capture_output=True, check=True
        )
        .stdout.decode()
        .split()
    )
    assert listing == ["bin", "bin/busybox", "bin/sh", "dev/console"]


def test_newc_archive_is_the_same_bytes_every_time() -> None:
    assert newc(_entries(), 1700000000) == newc(_entries(), 1700000000)


def test_newc_archive_is_padded_to_four_bytes_and_ends_with_the_trailer() -> None:
    blob = newc(_entries(), 1700000000)
    assert len(blob) % 4 == 0
    assert b"TRAILER!!!\0" in blob[-128:]


def test_module_order_loads_virtio_before_its_users_and_tc_last() -> None:
    names = [m.rsplit("/", 1)[-1] for m in initramfs.MODULES]
    assert names.index("virtio_ring") < names.index("virtio_net")
    assert names.index("net_failover") < names.index("virtio_net")
    assert names.index("jbd2") < names.index("ext4")
    assert names[-2:] == ["sch_ingress", "cls_bpf"]


def _xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)


def test_vmlinux_is_the_first_xz_stream_that_unpacks_to_an_elf_file() -> None:
    elf = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64
    bzimage = b"MZ setup and stub" + _xz(b"not a kernel") + b"\0" * 7 + _xz(elf) + b"trailer"
    assert initramfs.vmlinux(bzimage) == elf


def test_a_bzimage_without_an_xz_kernel_is_refused_by_name() -> None:
    with pytest.raises(UserError, match="no xz-compressed ELF kernel inside the bzImage"):
        initramfs.vmlinux(b"MZ" + _xz(b"no ELF here") + b"\xfd7zXZ\x00 broken")


def test_the_archive_is_one_deterministic_zstd_frame_that_unpacks_to_the_cpio() -> None:
    blob = newc(_entries(), 1700000000) * 50
    packed = initramfs.compress(blob)
    assert packed == initramfs.compress(blob)  # deterministic
    assert packed[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame, which the kernel unpacks
    assert len(packed) < len(blob) // 10
    unpacked = subprocess.run(["zstd", "-dc"], input=packed, capture_output=True, check=True)
    assert unpacked.stdout == blob

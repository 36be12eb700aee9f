"""`images/flash`: files and a real loop device; refusals leave the target untouched.

Root is needed for the loop-device tests (losetup, mount), as everywhere in this
suite's runs. The one stand-in: a device that stores other bytes than it was
given cannot be made here (no device-mapper in this kernel), so the read-back
test corrupts the target between write and read-back, where such a device would.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sennet.common.errors import UserError
from sennet_image import flash

IMAGES = Path(__file__).resolve().parent.parent


def _image(path: Path, mib: int = 9) -> Path:
    """A GPT disk image with data in it and a zeroed stretch (a hole when flashed to a file)."""
    with path.open("wb") as f:
        f.truncate(mib << 20)
    subprocess.run(
        ["sfdisk", "-q", str(path)], input=b"label: gpt\nstart=2048, size=4096\n", check=True
    )
    with path.open("r+b") as f:
        f.seek(1 << 20)
        f.write(os.urandom(3 << 20) + b"end of data")
    return path


def _sha(path: Path, size: int | None = None) -> str:
    with path.open("rb") as f:
        return hashlib.sha256(f.read(size) if size else f.read()).hexdigest()


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB loop device over a zeroed file, detached afterwards."""
    backing = tmp_path / "loop.img"
    with backing.open("wb") as f:
        f.truncate(16 << 20)
    dev = subprocess.run(
        ["losetup", "--find", "--show", "--partscan", str(backing)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        yield Path(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_a_raw_image_is_written_to_a_new_file_and_read_back(tmp_path: Path) -> None:
    image = _image(tmp_path / "appliance.raw", mib=17)  # 8..16 MiB: one zeroed chunk
    target = tmp_path / "out.raw"
    assert flash.flash(image, target, yes=False)
    assert target.read_bytes() == image.read_bytes()
    # the zeroed chunk became a hole: the file takes less room than its length
    assert target.stat().st_blocks * 512 <= target.stat().st_size - (4 << 20)


def test_an_xz_image_is_decompressed_on_the_way(tmp_path: Path) -> None:
    image = _image(tmp_path / "appliance.raw")
    xz = tmp_path / "appliance.raw.xz"
    xz.write_bytes(lzma.compress(image.read_bytes()))
    target = tmp_path / "out.raw"
    assert flash.flash(xz, target, yes=False)
    assert target.read_bytes() == image.read_bytes()


def test_a_corrupt_xz_image_is_refused_before_writing(tmp_path: Path) -> None:
    xz = tmp_path / "appliance.raw.xz"
    xz.write_bytes(b"not xz at all")
    with pytest.raises(UserError, match="not a valid xz stream"):
        flash.flash(xz, tmp_path / "out.raw", yes=False)
    assert not (tmp_path / "out.raw").exists()


def test_a_target_with_a_partition_table_needs_yes_without_a_terminal(tmp_path: Path) -> None:
    image = _image(tmp_path / "appliance.raw")
    old = _image(tmp_path / "old.raw", mib=12)
    before = _sha(old)
    res = subprocess.run(
        [IMAGES / "flash", str(image), str(old)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == (
        f"sennet_image: error: {old} holds a partition table (gpt); refusing to overwrite it"
    )
    assert _sha(old) == before
    res = subprocess.run(
        [IMAGES / "flash", "--yes", str(image), str(old)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "event=flash_progress" in res.stderr and "event=flash_done" in res.stderr
    assert old.read_bytes() == image.read_bytes()


def _on_a_terminal(argv: list[str], answer: bytes) -> tuple[int, str]:
    """Run `argv` with a pseudo-terminal as stdin, type `answer`; (exit status, stderr)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=follower, stderr=subprocess.PIPE, text=True)
    os.close(follower)
    os.write(leader, answer)
    _, err = proc.communicate(timeout=60)
    os.close(leader)
    return proc.returncode, err


@pytest.mark.parametrize(("answer", "status"), [(b"n\n", 2), (b"\n", 2), (b"y\n", 0)])
def test_on_a_terminal_it_asks_and_only_y_overwrites(
    tmp_path: Path, answer: bytes, status: int
) -> None:
    image = _image(tmp_path / "appliance.raw")
    old = _image(tmp_path / "old.raw", mib=12)
    before = _sha(old)
    code, err = _on_a_terminal([str(IMAGES / "flash"), str(image), str(old)], answer)
    assert f"{old} holds a partition table (gpt). Overwrite it? [y/N]" in err
    assert code == status
    if status == 0:
        assert old.read_bytes() == image.read_bytes()
    else:
        assert f"sennet_image: error: {old} left untouched" in err
        assert _sha(old) == before


def test_a_loop_device_is_written_and_verified(tmp_path: Path, loop: Path) -> None:
    image = _image(tmp_path / "appliance.raw")
    assert flash.flash(image, loop, yes=False)
    size = image.stat().st_size
    assert _sha(loop, size) == _sha(image)
    assert _sha(tmp_path / "loop.img", size) == _sha(image)


def test_a_mounted_device_is_refused(tmp_path: Path, loop: Path) -> None:
    image = _image(tmp_path / "appliance.raw")
    subprocess.run(["mkfs.ext2", "-q", str(loop)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", str(loop), str(mnt)], check=True)
    try:
        with pytest.raises(UserError) as e:
            flash.flash(image, loop, yes=True)
        assert e.value.message == f"{loop} is in use: {loop} is mounted at {mnt}"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    # still the file system, not the image's partition table
    probe = ["blkid", "-p", "-o", "value", "-s", "TYPE", str(tmp_path / "loop.img")]
    assert subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "ext2"


def test_a_device_whose_partition_is_mounted_is_refused(tmp_path: Path, loop: Path) -> None:
    image = _image(tmp_path / "appliance.raw")
    subprocess.run(
        ["sfdisk", "-q", str(loop)], input=b"label: gpt\nstart=2048, size=8192\n", check=True
    )
    part = Path(f"{loop}p1")
    subprocess.run(["partx", "-u", str(loop)], check=False)
    subprocess.run(["mkfs.ext2", "-q", str(part)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", str(part), str(mnt)], check=True)
    try:
        with pytest.raises(UserError) as e:
            flash.flash(image, loop, yes=True)
        assert e.value.message == f"{loop} is in use: {part} is mounted at {mnt}"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_read_back_that_differs_fails_the_flash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(tmp_path / "appliance.raw")
    target = tmp_path / "out.raw"
    real_write = flash.write

    def write_then_flip_a_byte(image: Path, target: Path, size: int) -> None:
        real_write(image, target, size)
        with target.open("r+b") as f:  # a device that kept one byte wrong
            f.seek(2 << 20)
            byte = f.read(1)
            f.seek(2 << 20)
            f.write(bytes([byte[0] ^ 0xFF]))

    monkeypatch.setattr(flash, "write", write_then_flip_a_byte)
    assert not flash.flash(image, target, yes=False)
    err = capsys.readouterr().err
    assert f"event=flash_verify_failed target={target} expected={_sha(image)}" in err
    assert "event=flash_done" not in err


def test_the_image_itself_and_a_missing_image_are_refused(tmp_path: Path) -> None:
    image = _image(tmp_path / "appliance.raw")
    with pytest.raises(UserError, match="is the image itself"):
        flash.flash(image, image, yes=True)
    with pytest.raises(UserError, match="image not found"):
        flash.flash(tmp_path / "nope.raw", tmp_path / "out.raw", yes=True)


def test_a_device_smaller_than_the_image_is_refused(tmp_path: Path, loop: Path) -> None:
    image = _image(tmp_path / "appliance.raw", mib=20)
    with pytest.raises(UserError, match=r"is smaller than the image \(20971520 bytes\)"):
        flash.flash(image, loop, yes=True)

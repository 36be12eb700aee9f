"""dm-verity formatting of a layer: reproducible bytes, a checkable tree, the command line.

Real veritysetup on real squashfs files; `veritysetup verify` checks the tree in user space,
so no device-mapper device (or root) is needed here. The boot-time checks are in
test_verified_boot.py (integration).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sennet.common.errors import UserError
from sennet_image import rootfs, verity


def _layer(tmp_path: Path, name: str, text: str) -> Path:
    tree = tmp_path / f"{name}.tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hello").write_text(text * 3000)
    out = tmp_path / f"{name}.squashfs"
    rootfs.mksquashfs(tree, out)
    return out


def _verify(image: Path, data_size: int, root_hash: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["veritysetup", "verify", f"--hash-offset={data_size}", image, image, root_hash],
        capture_output=True,
        check=False,
    )


def test_format_appends_the_tree_after_the_data_and_the_root_hash_verifies(
    tmp_path: Path,
) -> None:
    layer = _layer(tmp_path, "a", "sennet\n")
    data_size = layer.stat().st_size
    assert data_size % verity.BLOCK == 0
    root_hash = verity.format_layer(layer)
    assert len(root_hash) == 64 and int(root_hash, 16) >= 0
    assert layer.stat().st_size > data_size
    with layer.open("rb") as f:
        f.seek(data_size)
        assert f.read(8) == b"verity\0\0"
    assert _verify(layer, data_size, root_hash).returncode == 0


def test_the_same_layer_gives_the_same_bytes_and_another_layer_another_salt(
    tmp_path: Path,
) -> None:
    one = _layer(tmp_path, "one", "sennet\n")
    two = tmp_path / "two.squashfs"
    shutil.copyfile(one, two)
    other = _layer(tmp_path, "other", "different\n")
    salts = {verity.salt_and_uuid(h)[0] for h in ("a" * 64, "b" * 64)}
    assert len(salts) == 2
    assert verity.format_layer(one) == verity.format_layer(two)
    assert one.read_bytes() == two.read_bytes()
    assert verity.format_layer(other) != verity.format_layer(tmp_path / "one.squashfs")


def test_a_flipped_data_byte_or_a_wrong_root_hash_fails_verification(tmp_path: Path) -> None:
    layer = _layer(tmp_path, "a", "sennet\n")
    data_size = layer.stat().st_size
    root_hash = verity.format_layer(layer)
    assert _verify(layer, data_size, "0" * 64).returncode != 0
    with layer.open("r+b") as f:
        f.seek(data_size // 2)
        byte = f.read(1)
        f.seek(data_size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    result = _verify(layer, data_size, root_hash)
    assert result.returncode != 0
    # one data block: its hash is the root hash, so the root hash no longer verifies
    assert result.stderr.strip() == b"Verification of root hash failed."


def test_a_layer_that_is_not_whole_blocks_is_refused(tmp_path: Path) -> None:
    odd = tmp_path / "odd.squashfs"
    odd.write_bytes(b"x" * 5000)
    with pytest.raises(UserError, match=r"odd\.squashfs: 5000 bytes is not a whole number"):
        verity.format_layer(odd)


def test_command_line_names_both_layers_and_a_root_hash_file_is_checked(tmp_path: Path) -> None:
    args = verity.cmdline_args({"root": "1" * 64, "agent": "2" * 64})
    assert args == f"sennet.verity.root={'1' * 64} sennet.verity.agent={'2' * 64}"
    with pytest.raises(UserError, match="no verity root hash for layer"):
        verity.cmdline_args({"root": "1" * 64})
    bad = tmp_path / "root.roothash"
    bad.write_text("not-a-hash\n")
    with pytest.raises(UserError, match=r"root\.roothash: not a sha256 root hash"):
        verity.read_root_hash(bad)

"""The pinned build root: its shape, and that a different host tool cannot change the bytes.

The `integration` tests unpack the real root from buildroot.lock.json (fetched by sha256
into build/cache, unpacked once into build/buildroot/) and enter it with the real
`unshare` and bind mounts; they need root, as CI runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sennet_image import buildroot, lock, proc
from sennet_image.fsutil import sha256_file

IMAGES = Path(__file__).resolve().parent.parent
PYTHONPATH = f"{IMAGES}:{IMAGES.parent / 'python'}"


def test_merge_usr_moves_top_level_dirs_into_usr_and_leaves_links(tmp_path: Path) -> None:
    (tmp_path / "sbin").mkdir()
    (tmp_path / "sbin" / "sfdisk").write_text("x")
    (tmp_path / "lib" / "x86_64-linux-gnu").mkdir(parents=True)
    (tmp_path / "lib" / "x86_64-linux-gnu" / "libfdisk.so.1").symlink_to("libfdisk.so.1.1.0")
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "keep").write_text("y")
    buildroot._merge_usr(tmp_path)
    assert os.readlink(tmp_path / "sbin") == "usr/sbin"
    assert os.readlink(tmp_path / "lib") == "usr/lib"
    assert (tmp_path / "usr" / "sbin" / "sfdisk").read_text() == "x"
    link = tmp_path / "usr" / "lib" / "x86_64-linux-gnu" / "libfdisk.so.1"
    assert os.readlink(link) == "libfdisk.so.1.1.0"
    assert (tmp_path / "usr" / "lib" / "keep").read_text() == "y"


def test_the_digest_names_the_set_of_debs_not_their_order() -> None:
    pins = lock.load_debs(lock.BUILDROOT_LOCK)
    assert buildroot.digest(pins) == buildroot.digest(list(reversed(pins)))
    assert buildroot.digest(pins) != buildroot.digest(pins[1:])


def test_the_lock_pins_every_tool_the_build_runs() -> None:
    names = {p.name for p in lock.load_debs(lock.BUILDROOT_LOCK)}
    for package in (
        "clang-14",
        "libc6-dev",
        "linux-libc-dev",
        "squashfs-tools",
        "dosfstools",
        "mtools",
        "fdisk",
        "binutils-x86-64-linux-gnu",
        "systemd-boot-efi",
        "qemu-utils",
        "python3.11-minimal",
        "dpkg",
        "dash",
    ):
        assert package in names
    assert all(p.set == "build" for p in lock.load_debs(lock.BUILDROOT_LOCK))


def test_entering_names_the_root_and_maps_root_only_when_needed(tmp_path: Path) -> None:
    argv = proc.enter_argv(tmp_path, ["mksquashfs", "-version"])
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert ("--map-root-user" in argv) == (os.geteuid() != 0)
    assert argv[-3:] == [str(tmp_path), "mksquashfs", "-version"]


@pytest.fixture(scope="module")
def root() -> Path:
    return buildroot.ensure()


@pytest.mark.integration
def test_tools_run_from_the_root_at_the_pinned_versions(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(proc.BUILD_ROOT_ENV, str(root / buildroot.STAMP))
    pins = {p.name: p.version for p in lock.load_debs(lock.BUILDROOT_LOCK)}
    out = proc.run(["mksquashfs", "-version"]).stdout.decode()
    upstream = pins["squashfs-tools"].split(":")[-1].split("-")[0]
    assert out.startswith(f"mksquashfs version {upstream} ")
    version = proc.run(["python3.11", "-c", "import sys; print(sys.version.split()[0])"]).stdout
    assert version.decode().strip() == pins["python3.11-minimal"].split("-")[0]
    # the headers the BPF build includes are the pinned linux-libc-dev's
    text = proc.run(["cat", "/usr/include/linux/version.h"]).stdout
    assert text == (root / "usr/include/linux/version.h").read_bytes()


def _squash(tree: Path, out: Path, env: dict[str, str], wrapper: Path | None) -> str:
    """One mksquashfs of `tree` by the package's own step code, in a mount namespace where
    the host's /usr/bin/mksquashfs is, if `wrapper`, replaced by it."""
    code = (
        "import sys; from pathlib import Path; from sennet_image import rootfs; "
        "rootfs.mksquashfs(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    swap = f'mount --bind "{wrapper}" /usr/bin/mksquashfs && ' if wrapper else ""
    subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'{swap}exec "$@"', "-", sys.executable, "-c", code, str(tree), str(out)],
        env={**env, "PYTHONPATH": PYTHONPATH, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        check=True,
    )  # fmt: skip
    return sha256_file(out)


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="bind-mounts over the host's /usr/bin need root")
def test_a_different_host_mksquashfs_gives_the_same_bytes_in_the_root(
    root: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hello").write_text("the same bytes\n")
    (tree / "bin").mkdir()
    (tree / "bin" / "tool").write_bytes(bytes(range(256)) * 64)
    # A host mksquashfs that differs: the real one, then a trailing byte on its output.
    real = tmp_path / "real-mksquashfs"
    real.write_bytes(Path("/usr/bin/mksquashfs").read_bytes())
    real.chmod(0o755)
    wrapper = tmp_path / "mksquashfs"
    wrapper.write_text(f'#!/bin/sh\n"{real}" "$@" || exit $?\nprintf X >> "$2"\n')
    wrapper.chmod(0o755)
    host = {"SOURCE_DATE_EPOCH": "1700000000"}
    in_root = {**host, proc.BUILD_ROOT_ENV: str(root)}
    plain_host = _squash(tree, tmp_path / "a.sqfs", host, None)
    changed_host = _squash(tree, tmp_path / "b.sqfs", host, wrapper)
    assert changed_host != plain_host  # the wrapper really changes what the host tool makes
    pinned = _squash(tree, tmp_path / "c.sqfs", in_root, None)
    pinned_changed_host = _squash(tree, tmp_path / "d.sqfs", in_root, wrapper)
    assert pinned_changed_host == pinned
    assert (tmp_path / "d.sqfs").read_bytes()[-1:] != b"X"

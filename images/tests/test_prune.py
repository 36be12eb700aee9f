"""What the base root drops, and the check that nothing left links a dropped library."""

from __future__ import annotations

import _ssl
import shutil
from pathlib import Path

import pytest
from sennet.common.errors import UserError
from sennet_image import prune


def _tree(root: Path) -> None:
    for rel in (
        f"{prune.SITE}/grpc/_cython/cygrpc.so",
        f"{prune.STDLIB}/pydoc_data/topics.py",
        f"{prune.STDLIB}/json/__init__.py",
        f"{prune.DYNLOAD}/_testcapi.cpython-311-x86_64-linux-gnu.so",
        f"{prune.DYNLOAD}/_json.cpython-311-x86_64-linux-gnu.so",
        f"{prune.LIBDIR}/libdb-5.3.so",
        f"{prune.LIBDIR}/libbpf.so.1.1.2",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / prune.LIBDIR / "libreadline.so.8").symlink_to("libreadline.so.8.2")


def test_prune_removes_the_listed_paths_and_keeps_the_rest(tmp_path: Path) -> None:
    _tree(tmp_path)
    removed = prune.prune(tmp_path)
    assert removed == sorted(
        [
            f"{prune.DYNLOAD}/_testcapi.cpython-311-x86_64-linux-gnu.so",
            f"{prune.STDLIB}/pydoc_data",
            f"{prune.LIBDIR}/libreadline.so.8",
            f"{prune.LIBDIR}/libdb-5.3.so",
        ]
    )
    kept = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert kept == sorted(
        [
            f"{prune.SITE}/grpc/_cython/cygrpc.so",
            f"{prune.STDLIB}/json/__init__.py",
            f"{prune.DYNLOAD}/_json.cpython-311-x86_64-linux-gnu.so",
            f"{prune.LIBDIR}/libbpf.so.1.1.2",
        ]
    )


def test_check_needed_stops_when_a_kept_elf_links_a_removed_library(tmp_path: Path) -> None:
    """A real ELF file (the host's _ssl extension links libssl.so.3): removing libssl
    while keeping _ssl must stop the build, naming both."""
    ext = Path(_ssl.__file__)
    assert "libssl.so.3" in prune.needed(ext)
    target = tmp_path / prune.DYNLOAD / ext.name
    target.parent.mkdir(parents=True)
    shutil.copyfile(ext, target)
    with pytest.raises(UserError) as err:
        prune.check_needed(tmp_path, [f"{prune.LIBDIR}/libssl.so.3"])
    assert f"{prune.DYNLOAD}/{ext.name} links libssl.so.3" in str(err.value)
    prune.check_needed(tmp_path, [f"{prune.LIBDIR}/libsqlite3.so.0"])  # not linked: fine

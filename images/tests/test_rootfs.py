"""Wheels are unpacked without pip: library files only, modes normalised."""

from __future__ import annotations

import zipfile
from pathlib import Path

from sennet_image.rootfs import install_wheel


def test_wheel_purelib_lands_in_site_and_scripts_are_dropped(tmp_path: Path) -> None:
    whl = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("demo/__init__.py", "X = 1\n")
        zf.writestr("demo-1.0.data/purelib/demo_extra.py", "Y = 2\n")
        zf.writestr("demo-1.0.data/scripts/demo-cli", "#!/bin/sh\n")
        zf.writestr("demo-1.0.dist-info/METADATA", "Name: demo\n")
    site = tmp_path / "site"
    install_wheel(whl, site)
    files = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert files == ["demo-1.0.dist-info/METADATA", "demo/__init__.py", "demo_extra.py"]
    assert (site / "demo/__init__.py").stat().st_mode & 0o777 == 0o644


def test_pruning_site_drops_tests_stubs_and_headers_but_keeps_modules(tmp_path: Path) -> None:
    from sennet_image.rootfs import prune_site

    for rel in (
        "numpy/__init__.py",
        "numpy/tests/test_a.py",
        "numpy/_core/tests/t.py",
        "numpy/__init__.pyi",
        "numpy/_core/include/numpy/x.h",
        "numpy/f2py/__init__.py",
        "grpc/__init__.py",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    prune_site(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["grpc/__init__.py", "numpy/__init__.py"]

"""The built layers, unpacked: every program finds its libraries, the USB drivers are there.

The build's own check (prune.check_needed) sees the root alone; the test layer is
built in another step and links libraries the root provides (dropbear links the
root's libcrypt). Pruning one of those broke SSH into the test variant once, and
only a VM boot showed it; this reads the layers as the appliance mounts them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sennet_image import kmods, prune

pytestmark = pytest.mark.integration

LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib", "usr/lib64")


def unpack(layer: Path, into: Path) -> Path:
    subprocess.run(
        ["unsquashfs", "-q", "-no-progress", "-d", str(into), str(layer)],
        check=True,
        capture_output=True,
    )
    return into


def elves(tree: Path) -> list[Path]:
    out = []
    for path in sorted(tree.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    out.append(path)
    return out


@pytest.fixture(scope="module")
def layers(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("layers")
    return (
        unpack(image_dir / "root.squashfs", base / "root"),
        unpack(image_dir / "test.squashfs", base / "test"),
    )


def test_every_program_and_library_in_root_and_test_layer_finds_what_it_links(
    layers: tuple[Path, Path],
) -> None:
    root, test = layers
    names = {
        p.name
        for tree in (root, test)
        for d in LIB_DIRS
        if (tree / d).is_dir()
        for p in (tree / d).iterdir()
    }
    # kernel modules are ELF too, with no dynamic section: they link nothing
    checked = [p for tree in (root, test) for p in elves(tree) if p.suffix != ".ko"]
    missing = {str(p): lost for p in checked if (lost := sorted(set(prune.needed(p)) - names))}
    assert len(checked) > 50
    assert missing == {}


def test_the_root_carries_the_usb_stick_drivers_in_load_order(
    layers: tuple[Path, Path], image_dir: Path
) -> None:
    root, _ = layers
    release = (image_dir / "kernel-release").read_text().strip()
    where = root / "usr/lib/modules" / release / kmods.USB_STORAGE_DIR
    order = (where / "order").read_text().split()
    assert order == [rel.rsplit("/", 1)[-1] for rel in kmods.USB_STORAGE]
    for name in order:
        ko = (where / f"{name}.ko").read_bytes()
        assert ko[:4] == b"\x7fELF"
        # signed by Debian: Secure Boot's lockdown refuses an unsigned module
        assert ko.endswith(b"~Module signature appended~\n"), name

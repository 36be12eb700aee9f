"""The start-up files' -sort list: the agent's first reads placed first in their layer."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sennet_image import startup


def test_the_list_names_each_layers_own_files_relative_to_its_tree(tmp_path: Path) -> None:
    root, agent = tmp_path / "root", tmp_path / "agent"
    (root / "usr/lib/python3.11").mkdir(parents=True)
    (root / "usr/lib/python3.11/argparse.pyc").write_bytes(b"x")
    (agent / "lib/sennet/agent/__pycache__").mkdir(parents=True)
    (agent / "lib/sennet/agent/__pycache__/cli.cpython-311.pyc").write_bytes(b"x")
    lines = startup.sort_file(root, "/", tmp_path / "root.sort").read_text().splitlines()
    assert lines == ["usr/lib/python3.11/argparse.pyc 100"]
    lines = startup.sort_file(agent, "/opt/sennet", tmp_path / "a.sort").read_text().splitlines()
    assert lines == ["lib/sennet/agent/__pycache__/cli.cpython-311.pyc 100"]
    assert "/usr/lib/python3.11/argparse.pyc" in startup.STARTUP_FILES
    assert all(f.startswith(("/usr/", "/opt/sennet/")) for f in startup.STARTUP_FILES)


def test_mksquashfs_writes_the_listed_files_first(tmp_path: Path) -> None:
    """Against mksquashfs itself: without the list a file in the last directory is written
    last; with it, first (its bytes at the start of the image)."""
    tree = tmp_path / "t"
    for i in range(40):
        (tree / "a").mkdir(parents=True, exist_ok=True)
        (tree / "a" / f"f{i}").write_bytes(bytes([i]) * 3000 + i.to_bytes(2, "big") * 500)
    (tree / "z").mkdir()
    late = bytes(range(256)) * 12
    (tree / "z/late").write_bytes(late)
    order = tmp_path / "order"
    order.write_text("z/late 100\n")
    offsets = []
    for extra in ([], ["-sort", str(order)]):
        image = tmp_path / f"s{len(extra)}.sq"
        subprocess.run(
            ["mksquashfs", tree, image, "-noappend", "-quiet", "-no-progress", "-noD", "-noF",
             "-b", "4K", *extra],
            check=True, capture_output=True,
        )  # fmt: skip
        offsets.append(image.read_bytes().find(late[:256]))
    unsorted, placed = offsets
    assert placed < 200 < unsorted

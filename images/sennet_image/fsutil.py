"""Small deterministic file-tree helpers shared by the build steps."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def normalize_times(root: Path, epoch: int) -> None:
    """Every file, dir and symlink under `root` gets mtime `epoch` (no host time leaks)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(Path(dirpath) / name, (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def prune_empty_dirs(root: Path) -> None:
    """Remove directories the pruning left empty (keeps the file list honest)."""
    for dirpath, _dirnames, _filenames in os.walk(root, topdown=False):
        p = Path(dirpath)
        if p != root and not any(p.iterdir()):
            p.rmdir()


def file_list(root: Path) -> list[str]:
    """Sorted relative paths of everything under root, dirs with a trailing slash."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        out += [f"{rel / d}/".removeprefix("./") for d in dirnames]
        out += [str(rel / f).removeprefix("./") for f in filenames]
    return sorted(out)

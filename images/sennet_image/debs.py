"""Unpack Debian packages without dpkg: data.tar only, no maintainer scripts.

The image never runs a package manager, so there is nothing for maintainer
scripts to register; what they would do at install time (byte-compiling,
ldconfig) the build does itself, deterministically. Unpacking is in lock
order, so a file two packages ship ends up the same every time.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from sennet_image.proc import die, run

# Never wanted on the appliance: documentation, translations, manuals, hooks for tools it lacks.
PRUNE_PREFIXES = (
    "usr/share/doc/",
    "usr/share/man/",
    "usr/share/info/",
    "usr/share/locale/",
    "usr/share/lintian/",
    "usr/share/bug/",
    "usr/share/menu/",
    "usr/share/gdb/",
    "usr/share/bash-completion/",
    "usr/share/binfmts/",
    "usr/share/applications/",
    "usr/share/pixmaps/",
    "usr/share/readline/",
    "usr/share/python3/",
    "etc/python3.11/sitecustomize.py",
    "usr/lib/python3.11/test/",
    "usr/lib/python3.11/idlelib/",
    "usr/lib/python3.11/tkinter/",
    "usr/lib/python3.11/turtledemo/",
    "usr/lib/python3.11/lib2to3/",
    "usr/lib/python3.11/ensurepip/",
    "usr/lib/python3.11/pydoc_data/",
    "usr/lib/python3.11/config-3.11-x86_64-linux-gnu/",
    "usr/lib/x86_64-linux-gnu/gconv/",
    "usr/share/gcc/",
    "usr/lib/x86_64-linux-gnu/krb5/",
)


def data_tar(deb: Path) -> tarfile.TarFile:
    """The package's data archive, read through dpkg-deb (handles every compression)."""
    blob = run(["dpkg-deb", "--fsys-tarfile", deb]).stdout
    return tarfile.open(fileobj=io.BytesIO(blob), mode="r:")


def unpack(deb: Path, dest: Path, *, prune: bool = True, only: tuple[str, ...] = ()) -> list[str]:
    """Extract `deb` into `dest`; returns the member paths written (for the file list)."""
    written = []
    with data_tar(deb) as tar:
        members = []
        for m in tar.getmembers():
            name = m.name.removeprefix("./")
            if not name or (prune and name.startswith(PRUNE_PREFIXES)):
                continue
            if only and not name.startswith(only) and not m.isdir():
                continue
            if m.isdev() or ".." in Path(name).parts:
                die(f"{deb.name}: refusing member {m.name}")
            m.name = name
            members.append(m)
        for m in members:
            target = dest / m.name
            if m.isdir() and target.is_dir():  # also a merged-/usr link such as bin -> usr/bin
                continue
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                target.unlink()
            tar.extract(m, dest, set_attrs=False)
            if m.issym():
                continue
            target.chmod(m.mode & 0o7777)
            written.append(m.name)
    return written

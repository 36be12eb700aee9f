"""The bpf filesystem where maps are pinned, so counters outlive an agent process."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from sennet.common.errors import UserError
from sennet.common.proc import run

BPF_FS_MAGIC = 0xCAFE4A11


def _fs_magic(path: Path) -> int:
    import ctypes

    class Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]

    buf = Statfs()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(str(path).encode(), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return int(buf.f_type) & 0xFFFFFFFF


def is_bpffs(path: Path) -> bool:
    try:
        return _fs_magic(path) == BPF_FS_MAGIC
    except OSError:
        return False


def ensure_pin_dir(pin_dir: Path, mount_if_missing: bool = True) -> None:
    """Make `pin_dir` exist on a bpf filesystem, mounting /sys/fs/bpf when it is the default place.

    Pinning onto a non-bpffs path fails deep inside libbpf with EPERM; checking
    here turns that into an error that says what to do.
    """
    bpf_root = Path("/sys/fs/bpf")
    if (
        mount_if_missing
        and pin_dir.is_relative_to(bpf_root)
        and bpf_root.is_dir()
        and not is_bpffs(bpf_root)
    ):
        run(["mount", "-t", "bpf", "bpf", str(bpf_root)])
    parent = pin_dir
    while not parent.exists():
        parent = parent.parent
    if not is_bpffs(parent):
        raise UserError(
            f"pin_dir {pin_dir} is not on a bpf filesystem",
            hint=f"mount one first: mount -t bpf bpf {parent}",
        )
    try:
        pin_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise UserError(f"cannot create {pin_dir}: {exc.strerror}", hint="run as root") from exc
        raise

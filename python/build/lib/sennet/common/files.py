"""The one atomic file write: a crash leaves the old content or the new, never half.

Identity, the agent token and the control plane's ready file are all small
files that another process reads while this one may die at any instant. Write
to a temporary name in the same directory, fsync it, rename over the target,
then fsync the directory so the rename itself survives a power cut.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically and durably; the file gets exactly `mode`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # A leftover (or planted) entry at the temporary name is removed, never written
    # through: O_EXCL|O_NOFOLLOW create a new file or fail.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask and skips existing files
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)

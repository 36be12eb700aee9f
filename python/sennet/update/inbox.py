"""Bundles the agent fetched from the control plane: taken over by root, applied on time.

The agent (its own user) leaves `<sha256>.bundle` and `<sha256>.request.json`
({"apply_at": "now" | "HH:MM-HH:MM"}) in `/var/lib/sennet/agent/updates/`.
Root reads them as data only: never through a link, regular files only, size
bounded. The bundle is moved (renamed: the state partition has no room for a
second copy) into root's own spool and made root's; one whose sha256 is not its
name is dropped. What gets installed is verified again from scratch by
`install`, and hashed once more as it is written. The request is removed once taken.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from sennet.update.health import read_agent_file

MAX_BUNDLE_BYTES = 4 * 1024**3
_NAME = re.compile(r"^([0-9a-f]{64})\.request\.json$")
_WINDOW = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclass(frozen=True)
class Spooled:
    bundle: Path
    apply_at: str


def valid_apply_at(text: object) -> bool:
    return text == "now" or (isinstance(text, str) and bool(_WINDOW.match(text)))


def due(apply_at: str, now: time.struct_time) -> bool:
    """ "now", or the current UTC minute inside HH:MM-HH:MM (a window may cross midnight)."""
    if apply_at == "now":
        return True
    m = _WINDOW.match(apply_at)
    if m is None:
        return False
    start, end = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    minute = now.tm_hour * 60 + now.tm_min
    return start <= minute < end if start <= end else (minute >= start or minute < end)


def _take(src: Path, dst: Path, sha256: str) -> bool:
    """Move the agent's file into root's spool and make it root's; True if its sha256 is
    `sha256`. A rename moves the name, never follows a link; what arrives must be a regular
    file with one name (not a hard link to something else), at most MAX_BUNDLE_BYTES.
    No second copy: a bundle is as large as the state partition allows once, not twice.
    (A writer that kept the file open could still change it: `install` hashes every byte
    again as it writes, so changed bytes are never booted.)"""
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        os.rename(src, tmp)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ELOOP:
            return False
        raise
    try:
        st = os.fstat(fd)
        plain = stat.S_ISREG(st.st_mode) and st.st_nlink == 1
        if not plain or st.st_size > MAX_BUNDLE_BYTES:
            tmp.unlink()
            return False
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o600)
        h = hashlib.sha256()
        while data := os.read(fd, 1024 * 1024):
            h.update(data)
        if h.hexdigest() != sha256:
            tmp.unlink()
            return False
        os.replace(tmp, dst)
        return True
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)


def take(inbox: Path, spool: Path) -> tuple[list[Spooled], list[str]]:
    """Move every request from the agent's inbox into root's spool: (taken, rejected names).

    The agent writes the request after the bundle is complete, so a request whose
    bundle is missing, not a plain file, too large or not of its sha256 is rejected
    and both files removed (they would be re-read at every look otherwise)."""
    if not inbox.is_dir() or inbox.is_symlink():
        return [], []
    rejected = []
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    taken = []
    for request in sorted(inbox.iterdir()):
        m = _NAME.match(request.name)
        if m is None:
            continue
        sha = m[1]
        raw = read_agent_file(request, 4096)
        try:
            apply_at = json.loads(raw).get("apply_at") if raw else None
        except (ValueError, AttributeError):
            apply_at = None
        src = inbox / f"{sha}.bundle"
        if valid_apply_at(apply_at) and _take(src, spool / f"{sha}.bundle", sha):
            (spool / f"{sha}.apply_at").write_text(str(apply_at))
            taken.append(Spooled(spool / f"{sha}.bundle", str(apply_at)))
        else:
            rejected.append(request.name)
        request.unlink(missing_ok=True)
        src.unlink(missing_ok=True)
    return taken, rejected


def waiting(spool: Path) -> list[Spooled]:
    """Spooled bundles with their apply_at, oldest name first."""
    if not spool.is_dir():
        return []
    out = []
    for bundle in sorted(spool.glob("*.bundle")):
        try:
            apply_at = bundle.with_suffix(".apply_at").read_text().strip()
        except OSError:
            apply_at = "now"
        out.append(Spooled(bundle, apply_at))
    return out


def drop(item: Spooled) -> None:
    item.bundle.unlink(missing_ok=True)
    item.bundle.with_suffix(".apply_at").unlink(missing_ok=True)

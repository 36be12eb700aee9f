"""The state directory in two zones: root's files, and the dropped agent's own subdirectory.

An agent that gives up root (`run_as`) still writes one file for the rest of
its life: its token, at enrolment. If it owned the whole state directory, a
compromised agent could plant a symbolic or hard link there (`identity.json`
pointing at a secret, a hard link to a system file) and the next start, running
as root, would read, rewrite or chown what the link points at. So:

- `state_dir` itself and what root writes at start (identity, `tc-owned.json`)
  belong to root; the agent cannot create, replace or remove anything there.
- `state_dir/agent/` (`AGENT_DIR`) belongs to the agent: its token lives there.
  Root hands the directory over but never reads, follows or writes inside it.
- Root reads its own files only through `read_root_file`: never through a link,
  only a regular file with one name, owned by root and writable by nobody else.
  Anything else is refused (`state_file_refused`), moved aside for inspection,
  and treated as missing.

`prepare` also moves an older layout over (the agent owned `state_dir` and kept
its token at the top): the directory is taken back first, so nothing can change
under the checks that follow; root's files the agent owned are taken back only if
they are plain files (their content is data); links are refused.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path

from sennet.common.errors import UserError
from sennet.common.log import event

log = logging.getLogger("sennet.agent.statedir")

AGENT_DIR = "agent"  # the dropped agent's own subdirectory
TOKEN_FILE = "agent-token"  # kept in AGENT_DIR; at the top in the older layout
ROOT_FILES = (  # root's, at the top
    "identity.json",
    "identity.json.bak",
    "tc-owned.json",
    "early-attach.plan",
)


class Untrusted(Exception):
    """A state file root must not read: `why` says what is wrong with it."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


def _open_plain(path: Path) -> int | None:
    """An fd on `path` if it is a regular file with one name (never through a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Untrusted(path, "symbolic_link") from None
        raise
    st = os.fstat(fd)
    why = ""
    if not stat.S_ISREG(st.st_mode):
        why = "not_a_regular_file"
    elif st.st_nlink != 1:
        why = "hard_linked"
    if why:
        os.close(fd)
        raise Untrusted(path, why)
    return fd


def read_root_file(path: Path) -> bytes | None:
    """The content of one of our own state files, or None if there is none.

    Raises `Untrusted` for a link, anything but a regular file, a file with more
    than one name, or one owned by another user or writable by group or others:
    its content could be someone else's, or changed under us.
    """
    fd = _open_plain(path)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise Untrusted(path, f"owned_by_uid_{st.st_uid}")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise Untrusted(path, "writable_by_others")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def refuse(err: Untrusted) -> Path:
    """Log the refusal and move the entry aside (a rename: nothing is followed)."""
    aside = err.path.with_name(f"{err.path.name}.refused-{int(time.time())}")
    os.replace(err.path, aside)
    event(
        log,
        "state_file_refused",
        logging.WARNING,
        path=str(err.path),
        why=err.why,
        moved_to=str(aside),
    )
    return aside


def _give(path: Path, uid: int, gid: int) -> None:
    """Change the owner of a plain file, checked on the open fd (refused and moved if not)."""
    try:
        fd = _open_plain(path)
    except Untrusted as err:
        refuse(err)
        return
    if fd is None:
        return
    try:
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def prepare(state_dir: Path, agent_uid: int | None = None, agent_gid: int | None = None) -> Path:
    """Lay out `state_dir` (root's) and its `AGENT_DIR` (the agent's); the latter's path.

    Runs as root at start, before anything in the directory is read. Without a
    `run_as` user (`agent_uid` None) the agent directory is root's too.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.stat(state_dir)
    except OSError as exc:
        raise UserError(f"cannot create state_dir {state_dir}: {exc.strerror}") from None
    me = os.geteuid()
    inherited = st.st_uid != me  # the older layout: the dropped agent owned the directory
    if inherited:
        os.chown(state_dir, me, os.getegid())
        event(log, "state_dir_reclaimed", path=str(state_dir), was_uid=st.st_uid)
    # Others may pass through (the dropped agent reaches its own directory) but not list
    # or write; root's files in it are 0600.
    os.chmod(state_dir, 0o711 if agent_uid is not None else 0o700)
    for name in ROOT_FILES:
        _check_root_file(state_dir / name, take_back=inherited)
    mine = state_dir / AGENT_DIR
    try:
        st = os.lstat(mine)
        if not stat.S_ISDIR(st.st_mode):  # a link (or anything else) is never followed
            refuse(Untrusted(mine, "not_a_directory"))
            raise FileNotFoundError
    except FileNotFoundError:
        mine.mkdir(mode=0o700)
    uid = me if agent_uid is None else agent_uid
    gid = os.getegid() if agent_gid is None else agent_gid
    os.chown(mine, uid, gid, follow_symlinks=False)
    os.chmod(mine, 0o700, follow_symlinks=False)
    old_token = state_dir / TOKEN_FILE
    if os.path.lexists(old_token) and not os.path.lexists(mine / TOKEN_FILE):
        os.rename(old_token, mine / TOKEN_FILE)  # moves the entry itself, never a target
        event(log, "state_moved", path=str(old_token), to=str(mine / TOKEN_FILE))
    # A token written while the agent ran as another user (run_as changed): hand it over,
    # checked on the open file so a link cannot redirect the chown.
    _give(mine / TOKEN_FILE, uid, gid)
    return mine


def _check_root_file(path: Path, take_back: bool) -> None:
    """Refuse a link or foreign file among root's; in an inherited directory, take back
    a plain file the agent owned (its content is data, and it is root's from now on)."""
    try:
        fd = _open_plain(path)
    except Untrusted as err:
        refuse(err)
        return
    if fd is None:
        return
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid():
            return
        if take_back:
            os.fchown(fd, os.geteuid(), os.getegid())
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))
            return
    finally:
        os.close(fd)
    refuse(Untrusted(path, f"owned_by_uid_{st.st_uid}"))

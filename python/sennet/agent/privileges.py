"""Give up root once the data plane is attached, keeping only CAP_NET_ADMIN.

Loading BPF programs, pinning maps and attaching TC filters need root; what
the agent does for the rest of its life does not: it reads maps and the ring
through file descriptors and mappings it already holds, talks to the control
plane over ordinary sockets, and serves /metrics on a port above 1024. It
keeps one capability, CAP_NET_ADMIN, so it can still remove (and later re-add)
its TC filters over netlink. The bounding set is cut to that one too
and no_new_privs is set, so nothing it could exec gets any of it back.

Capabilities and the bounding set are per thread in Linux: this runs on the
main thread before any other thread starts, and every thread started later
inherits the reduced sets. The one thread that may exist already (it holds the
monitored network namespace, see `datapath.nsthread`) is reduced the same way
through `others`. (glibc applies setresuid/setresgid to every thread.)
"""

from __future__ import annotations

import ctypes
import os
import pwd
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sennet.common.errors import UserError

CAP_NET_ADMIN = 12
CAP_LAST_CAP_FILE = Path("/proc/sys/kernel/cap_last_cap")
PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int


def parse(run_as: str) -> Identity:
    """`user` (from the password database) or `uid:gid` (numbers, no entry needed)."""
    if ":" in run_as:
        uid_text, _, gid_text = run_as.partition(":")
        if not (uid_text.isdigit() and gid_text.isdigit()):
            raise UserError(f"run_as: expected a user name or uid:gid, got {run_as!r}")
        return Identity(int(uid_text), int(gid_text))
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        raise UserError(f"run_as: no user {run_as!r}", hint="or give uid:gid") from None
    return Identity(entry.pw_uid, entry.pw_gid)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _limit_this_thread() -> None:
    """Cut this thread's bounding set to CAP_NET_ADMIN; keep capabilities across setresuid."""
    libc = _libc()
    last_cap = int(CAP_LAST_CAP_FILE.read_text())
    for cap in range(last_cap + 1):
        if cap != CAP_NET_ADMIN:
            _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
    _check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "PR_SET_KEEPCAPS")


def _keep_net_admin_on_this_thread() -> None:
    """After setresuid: this thread holds CAP_NET_ADMIN only, and can never regain more."""
    libc = _libc()
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    keep = 1 << CAP_NET_ADMIN
    data = (_CapData * 2)(_CapData(keep, keep, 0), _CapData(0, 0, 0))
    _check(libc.syscall(126, ctypes.byref(header), data), "capset")  # SYS_capset on x86-64
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


def drop_to(who: Identity, others: Sequence[Callable[[Callable[[], None]], None]] = ()) -> None:
    """Become `who`, keeping only CAP_NET_ADMIN.

    `others` run a function on each thread that already exists (the one that holds
    the monitored network namespace): the per-thread steps run there too, so no
    thread keeps more than this one. The ids change in every thread at once (glibc).
    What `who` may write afterwards is its own directory only, handed over by
    `statedir.prepare` before anything was read: nothing is chowned here.
    """
    if os.geteuid() != 0:
        raise UserError("run_as needs the agent to start as root (it gives root up itself)")
    for run in others:
        run(_limit_this_thread)
    _limit_this_thread()
    os.setgroups([])
    os.setresgid(who.gid, who.gid, who.gid)
    os.setresuid(who.uid, who.uid, who.uid)
    for run in others:
        run(_keep_net_admin_on_this_thread)
    _keep_net_admin_on_this_thread()

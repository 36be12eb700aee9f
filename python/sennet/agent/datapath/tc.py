"""TC attachment through libbpf: clsact qdisc plus direct-action BPF filters.

Idempotent by construction: each filter has a fixed (parent, priority, handle)
and is installed with "replace", so a restarted agent swaps its program in
place, with no window without a filter and never a duplicate. A clsact qdisc
that was already there is left alone on detach; one we created is removed only
when no filters remain on it.

The calls run in the agent's network namespace (`netns`) through a `NetnsRunner`;
libbpf does the netlink, a read-only dump (`tcdump`) lists a hook's filters.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sennet.agent.datapath import netlink_attach as nl
from sennet.agent.datapath import tcdump
from sennet.agent.datapath.libbpf import BpfError
from sennet.agent.datapath.nsthread import NetnsRunner
from sennet.agent.datapath.tcdump import FilterInfo
from sennet.common.errors import UserError
from sennet.common.log import event

log = logging.getLogger("sennet.agent.tc")

PARENT_INGRESS = 0xFFFFFFF2
PARENT_EGRESS = 0xFFFFFFF3
HANDLE = 1
_POINT = {PARENT_INGRESS: nl.BPF_TC_INGRESS, PARENT_EGRESS: nl.BPF_TC_EGRESS}
_GONE = (errno.ENOENT, errno.EINVAL, errno.ENODEV)

__all__ = ["HANDLE", "PARENT_EGRESS", "PARENT_INGRESS", "FilterInfo", "TcAttacher"]

P = ParamSpec("P")
T = TypeVar("T")


def _ifindex_or_none(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def _ifname_or_none(ifindex: int) -> str | None:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return None


def _live() -> list[int]:
    return [index for index, _name in socket.if_nameindex()]


class TcAttacher:
    """Attaches Sennet's programs to interfaces in one network namespace."""

    def __init__(self, priority: int, netns: str = "") -> None:
        if not 1 <= priority <= 0xFFFF:
            raise UserError(f"tc priority {priority} out of range 1..65535")
        self.priority = priority
        self.ns = NetnsRunner(netns)

    def close(self) -> None:
        self.ns.close()

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """fn(...) in this attacher's namespace (for XDP calls and other netlink)."""
        return self.ns.run(fn, *args, **kwargs)

    def ifindex(self, ifname: str) -> int:
        """The ifindex of `ifname`, for callers that cannot wait for it (tools, benchmarks)."""
        found = self.lookup(ifname)
        if found is None:
            raise UserError(
                f"interface {ifname!r} does not exist in this network namespace",
                hint="check `ip link`",
            )
        return found

    def lookup(self, ifname: str) -> int | None:
        """The ifindex of `ifname` in this namespace now, or None if there is no such link."""
        return self.ns.run(_ifindex_or_none, ifname)

    def ifname(self, ifindex: int) -> str | None:
        return self.ns.run(_ifname_or_none, ifindex)

    def live(self) -> list[int]:
        """The ifindex of every interface in the namespace now."""
        return self.ns.run(_live)

    def ensure_clsact(self, ifindex: int) -> bool:
        """Add a clsact qdisc unless one exists; True when this call created it."""
        try:
            return self.ns.run(nl.tc_hook_create, ifindex)
        except BpfError as exc:
            raise UserError(f"cannot add clsact qdisc on ifindex {ifindex}: {exc}") from exc

    def filters(self, ifindex: int, parent: int) -> list[FilterInfo]:
        return self.ns.run(tcdump.filters, ifindex, parent)

    def attach(self, ifindex: int, parent: int, prog_fd: int, prog_name: str) -> None:
        """Install (or replace in place) our filter at our priority on one hook, matching
        every protocol (libbpf names it after the program: "<name>:[<id>]")."""
        for f in self.filters(ifindex, parent):
            if f.prio == self.priority and f.handle == HANDLE and not f.name.startswith("sennet"):
                raise UserError(
                    f"ifindex {ifindex} already has a {f.kind} filter {f.name!r} at priority "
                    f"{self.priority}; refusing to replace someone else's filter",
                    hint="set tc_priority to a free priority",
                )
        try:
            self.ns.run(nl.tc_attach, ifindex, _POINT[parent], self.priority, HANDLE, prog_fd)
        except BpfError as exc:
            raise UserError(f"cannot attach {prog_name} to ifindex {ifindex}: {exc}") from exc

    def detach(
        self, ifindex: int, parent: int, prio: int | None = None, handle: int = HANDLE
    ) -> bool:
        """Remove our filter from one hook (at our priority unless another is named: a
        boot-time load under an older configuration); True if it was there."""
        prio = self.priority if prio is None else prio
        ours = [
            f
            for f in self.filters(ifindex, parent)
            if f.prio == prio and f.handle == handle and f.name.startswith("sennet")
        ]
        if not ours:
            return False
        try:
            self.ns.run(nl.tc_detach, ifindex, _POINT[parent], prio, handle)
        except BpfError as exc:
            if exc.errno not in _GONE:
                raise
        return True

    def remove_clsact_if_empty(self, ifindex: int) -> bool:
        if self.filters(ifindex, PARENT_INGRESS) or self.filters(ifindex, PARENT_EGRESS):
            return False
        try:
            self.ns.run(nl.tc_hook_destroy, ifindex)
        except BpfError as exc:
            if exc.errno not in _GONE:
                raise
            return False
        event(log, "clsact_removed", ifindex=ifindex)
        return True

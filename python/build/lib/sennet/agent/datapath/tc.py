"""TC attachment with pyroute2: clsact qdisc plus direct-action BPF filters.

Idempotent by construction: each filter has a fixed (parent, priority, handle)
and is installed with "replace", so a restarted agent swaps its program in
place, with no window without a filter and never a duplicate. A clsact qdisc
that was already there is left alone on detach; one we created is removed only
when no filters remain on it.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from sennet.common.errors import UserError
from sennet.common.log import event
from sennet.common.netns import entered

log = logging.getLogger("sennet.agent.tc")

TC_H_CLSACT = 0xFFFFFFF1
PARENT_INGRESS = 0xFFFFFFF2
PARENT_EGRESS = 0xFFFFFFF3
ETH_P_ALL = 0x0003
HANDLE = 1


@dataclass(frozen=True)
class FilterInfo:
    prio: int
    handle: int
    kind: str
    name: str


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


class TcAttacher:
    """Attaches Sennet's programs to interfaces through one netlink socket."""

    def __init__(self, priority: int, netns: str = "") -> None:
        if not 1 <= priority <= 0xFFFF:
            raise UserError(f"tc priority {priority} out of range 1..65535")
        self.priority = priority
        with entered(netns):  # the socket stays bound to the namespace it was opened in
            self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

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
        found = self.ipr.link_lookup(ifname=ifname)
        return int(found[0]) if found else None

    def ifname(self, ifindex: int) -> str | None:
        try:
            links = self.ipr.get_links(ifindex)
        except NetlinkError:
            return None
        return str(links[0].get_attr("IFLA_IFNAME")) if links else None

    def has_clsact(self, ifindex: int) -> bool:
        for qdisc in self.ipr.get_qdiscs(index=ifindex):
            if _attr(qdisc, "TCA_KIND") == "clsact":
                return True
        return False

    def ensure_clsact(self, ifindex: int) -> bool:
        """Add a clsact qdisc unless one exists; True when this call created it."""
        if self.has_clsact(ifindex):
            return False
        try:
            self.ipr.tc("add", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise UserError(f"cannot add clsact qdisc on ifindex {ifindex}: {exc}") from exc
        return True

    def filters(self, ifindex: int, parent: int) -> list[FilterInfo]:
        result = []
        try:
            msgs = self.ipr.get_filters(index=ifindex, parent=parent)
        except NetlinkError as exc:
            if exc.code in (errno.EINVAL, errno.ENOENT):
                return []
            raise
        for msg in msgs:
            if not msg["handle"]:
                continue  # the per-priority chain head, not a filter
            opts = _attr(msg, "TCA_OPTIONS")
            name = (opts.get_attr("TCA_BPF_NAME") if opts is not None else None) or ""
            result.append(
                FilterInfo(
                    prio=(msg["info"] >> 16) & 0xFFFF,
                    handle=msg["handle"],
                    kind=str(_attr(msg, "TCA_KIND")),
                    name=str(name),
                )
            )
        return result

    def attach(self, ifindex: int, parent: int, prog_fd: int, prog_name: str) -> None:
        """Install (or replace in place) our filter at our priority on one hook."""
        for f in self.filters(ifindex, parent):
            if f.prio == self.priority and f.handle == HANDLE and not f.name.startswith("sennet"):
                raise UserError(
                    f"ifindex {ifindex} already has a {f.kind} filter {f.name!r} at priority "
                    f"{self.priority}; refusing to replace someone else's filter",
                    hint="set tc_priority to a free priority",
                )
        try:
            self.ipr.tc(
                "replace-filter",
                "bpf",
                ifindex,
                HANDLE,
                fd=prog_fd,
                name=prog_name,
                parent=parent,
                prio=self.priority,
                protocol=ETH_P_ALL,
                classid=1,
                direct_action=True,
            )
        except NetlinkError as exc:
            raise UserError(f"cannot attach {prog_name} to ifindex {ifindex}: {exc}") from exc

    def detach(self, ifindex: int, parent: int) -> bool:
        """Remove our filter from one hook; True if it was there."""
        ours = [
            f
            for f in self.filters(ifindex, parent)
            if f.prio == self.priority and f.handle == HANDLE and f.name.startswith("sennet")
        ]
        if not ours:
            return False
        try:
            self.ipr.tc(
                "del-filter",
                "bpf",
                ifindex,
                HANDLE,
                parent=parent,
                prio=self.priority,
                protocol=ETH_P_ALL,
            )
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise
        return True

    def remove_clsact_if_empty(self, ifindex: int) -> bool:
        if self.filters(ifindex, PARENT_INGRESS) or self.filters(ifindex, PARENT_EGRESS):
            return False
        try:
            self.ipr.tc("del", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise
            return False
        event(log, "clsact_removed", ifindex=ifindex)
        return True

"""Netlink link events: wake the run loop the moment an interface appears, changes or goes.

The run loop re-checks its interfaces every interval anyway (`reconcile`); this
watch only makes that prompt. It listens on an rtnetlink socket subscribed to
RTMGRP_LINK, opened in the monitored namespace, and sets an event on every
RTM_NEWLINK/RTM_DELLINK (or when the kernel says it dropped some of them, since
then anything may have changed). It never touches TC or the maps itself: attaching
stays with the run loop (through libbpf, see `tc`). The socket
is opened while the agent is still root (entering a namespace needs it);
receiving link notifications needs no privilege, so the watch keeps working
after `run_as`.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading

from sennet.common.netns import entered

RTMGRP_LINK = 0x1
RTM_NEWLINK = 16
RTM_DELLINK = 17
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid


def link_changes(data: bytes) -> bool:
    """True when a datagram from the socket holds at least one link message."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            return True
        if length < _NLMSGHDR.size:
            break  # malformed; never loop forever on it
        offset += (length + 3) & ~3
    return False


class LinkWatch:
    """An rtnetlink link subscription in `netns`; `run` sets `changed` on each link event."""

    def __init__(self, netns: str = "") -> None:
        with entered(netns):  # the socket stays bound to the namespace it was opened in
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            self._sock.bind((0, RTMGRP_LINK))
        except OSError:
            self._sock.close()
            raise

    def run(self, stop: threading.Event, changed: threading.Event) -> None:
        """Until `stop`: wait for link messages and set `changed` (a thread's target)."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        while not stop.is_set():
            if not poller.poll(200):
                continue
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                changed.set()  # the kernel dropped notifications: re-check everything
                continue
            if link_changes(data):
                changed.set()

    def close(self) -> None:
        self._sock.close()

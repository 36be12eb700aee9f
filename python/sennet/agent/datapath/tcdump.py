"""List the TC filters on one hook: a read-only rtnetlink dump.

libbpf can query the one filter at a given (priority, handle) but cannot list a
hook, and two decisions need the whole list: whether someone else's filter sits
where ours would go, and whether a clsact qdisc we created is empty and may go.
A dump needs no privilege, so this works after the agent gave root up. The socket
is opened in the calling thread's network namespace.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

RTM_NEWTFILTER = 44
RTM_GETTFILTER = 46
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_BPF_NAME = 7
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_RTATTR = struct.Struct("=HH")  # length, type


@dataclass(frozen=True)
class FilterInfo:
    """One filter as the kernel lists it (name: a bpf filter's TCA_BPF_NAME, else "")."""

    prio: int
    handle: int
    kind: str
    name: str


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """The netlink attributes in data[start:end], by type (nested ones unparsed)."""
    out = {}
    while start + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, start)
        if length < _RTATTR.size:
            break  # malformed; never loop forever on it
        out[kind & 0x3FFF] = data[start + _RTATTR.size : start + length]
        start += (length + 3) & ~3
    return out


def _text(raw: bytes | None) -> str:
    return (raw or b"").split(b"\0", 1)[0].decode(errors="replace")


def _parse(data: bytes, out: list[FilterInfo]) -> bool:
    """Append the filters in one datagram; True once the dump is done."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            return True
        body = offset + _NLMSGHDR.size
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, body)
            if code:
                raise OSError(-code, f"listing tc filters: {errno.errorcode.get(-code, code)}")
            return True
        if kind == RTM_NEWTFILTER:
            _family, _ifindex, handle, _parent, info = _TCMSG.unpack_from(data, body)
            attrs = _attrs(data, body + _TCMSG.size, offset + length)
            opts = attrs.get(TCA_OPTIONS, b"")
            name = _text(_attrs(opts, 0, len(opts)).get(TCA_BPF_NAME))
            if handle:  # a handle of 0 is the per-priority chain head, not a filter
                out.append(
                    FilterInfo((info >> 16) & 0xFFFF, handle, _text(attrs.get(TCA_KIND)), name)
                )
        offset += (length + 3) & ~3
    return False


def filters(ifindex: int, parent: int) -> list[FilterInfo]:
    """Every filter on hook `parent` of `ifindex`; [] when the hook does not exist."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        tcmsg = _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, parent, 0)
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(tcmsg), RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        )
        sock.send(header + tcmsg)
        out: list[FilterInfo] = []
        try:
            while not _parse(sock.recv(65536), out):
                pass
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
                return []
            raise
        return out

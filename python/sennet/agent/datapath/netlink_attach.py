"""libbpf's TC and XDP attach calls through ctypes: the rtnetlink the agent needs.

libbpf, already loaded for the programs and maps, implements clsact hooks,
direct-action bpf filters and XDP attachment itself (each call opens a short
rtnetlink socket in the calling thread's network namespace), so the agent needs
no netlink library on its way to counting. Every call returns plain values or
raises `BpfError` with the kernel's errno.

The option structs are libbpf 1.1's (Debian 12's libbpf1) and each carries its
own size in `sz`, which libbpf checks: a field it does not know must be zero.
"""

from __future__ import annotations

import ctypes
import errno
import functools

from sennet.agent.datapath.libbpf import libbpf

BPF_TC_INGRESS = 1 << 0
BPF_TC_EGRESS = 1 << 1
BPF_TC_F_REPLACE = 1 << 0
# include/uapi/linux/if_link.h: what bpf_xdp_query reports in attach_mode
XDP_ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload", 4: "multi"}


class TcHook(ctypes.Structure):
    """struct bpf_tc_hook."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_uint),
        ("parent", ctypes.c_uint32),
    ]


class TcOpts(ctypes.Structure):
    """struct bpf_tc_opts."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
    ]


class XdpAttachOpts(ctypes.Structure):
    """struct bpf_xdp_attach_opts."""

    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int)]


class XdpQueryOpts(ctypes.Structure):
    """struct bpf_xdp_query_opts (all outputs)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
    ]


@functools.cache
def _lib() -> ctypes.CDLL:
    """libbpf with these calls' signatures declared (once, on first use)."""
    lib = libbpf().lib
    hook, opts = ctypes.POINTER(TcHook), ctypes.POINTER(TcOpts)
    i, u32 = ctypes.c_int, ctypes.c_uint32
    sigs: dict[str, list[object]] = {
        "bpf_tc_hook_create": [hook],
        "bpf_tc_hook_destroy": [hook],
        "bpf_tc_attach": [hook, opts],
        "bpf_tc_detach": [hook, opts],
        "bpf_tc_query": [hook, opts],
        "bpf_xdp_attach": [i, i, u32, ctypes.POINTER(XdpAttachOpts)],
        "bpf_xdp_detach": [i, u32, ctypes.POINTER(XdpAttachOpts)],
        "bpf_xdp_query": [i, i, ctypes.POINTER(XdpQueryOpts)],
    }
    for name, argtypes in sigs.items():
        fn = getattr(lib, name)
        fn.restype = i
        fn.argtypes = argtypes
    return lib


def _check(rc: int, what: str) -> None:
    libbpf().check(rc, what)


def _hook(ifindex: int, point: int) -> TcHook:
    return TcHook(sz=ctypes.sizeof(TcHook), ifindex=ifindex, attach_point=point)


def _opts(prio: int, handle: int, prog_fd: int = 0, flags: int = 0) -> TcOpts:
    return TcOpts(
        sz=ctypes.sizeof(TcOpts), prog_fd=prog_fd, flags=flags, handle=handle, priority=prio
    )


def tc_hook_create(ifindex: int) -> bool:
    """Add a clsact qdisc; False when the interface already has one (EEXIST)."""
    hook = _hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)
    rc = _lib().bpf_tc_hook_create(ctypes.byref(hook))
    if rc == -errno.EEXIST:
        return False
    _check(rc, f"adding a clsact qdisc on ifindex {ifindex}")
    return True


def tc_hook_destroy(ifindex: int) -> None:
    """Delete the clsact qdisc, and with it every filter on it (callers check first)."""
    hook = _hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)
    _check(_lib().bpf_tc_hook_destroy(ctypes.byref(hook)), f"deleting clsact on ifindex {ifindex}")


def tc_attach(ifindex: int, point: int, prio: int, handle: int, prog_fd: int) -> int:
    """Install or replace the direct-action bpf filter at (prio, handle); its program id.

    libbpf names the filter "<program name>:[<program id>]" and matches all protocols."""
    opts = _opts(prio, handle, prog_fd, BPF_TC_F_REPLACE)
    hook = _hook(ifindex, point)
    _check(
        _lib().bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)),
        f"attaching a bpf filter on ifindex {ifindex}",
    )
    return int(opts.prog_id)


def tc_detach(ifindex: int, point: int, prio: int, handle: int) -> None:
    """Delete the bpf filter at (prio, handle) on one hook."""
    opts = _opts(prio, handle)
    hook = _hook(ifindex, point)
    _check(
        _lib().bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts)),
        f"deleting the bpf filter on ifindex {ifindex}",
    )


def xdp_attach(ifindex: int, prog_fd: int, flags: int) -> None:
    """Attach (or replace) the interface's XDP program in the mode `flags` names."""
    opts = XdpAttachOpts(sz=ctypes.sizeof(XdpAttachOpts), old_prog_fd=0)
    _check(
        _lib().bpf_xdp_attach(ifindex, prog_fd, flags, ctypes.byref(opts)),
        f"XDP attach on ifindex {ifindex}",
    )


def xdp_detach(ifindex: int, flags: int) -> None:
    """Remove the interface's XDP program in the mode `flags` names."""
    opts = XdpAttachOpts(sz=ctypes.sizeof(XdpAttachOpts), old_prog_fd=0)
    _check(
        _lib().bpf_xdp_detach(ifindex, flags, ctypes.byref(opts)),
        f"XDP detach on ifindex {ifindex}",
    )


def xdp_query(ifindex: int) -> tuple[str, int]:
    """The interface's XDP mode ("" for none) and program id (0 for none or "multi")."""
    opts = XdpQueryOpts(sz=ctypes.sizeof(XdpQueryOpts))
    _check(_lib().bpf_xdp_query(ifindex, 0, ctypes.byref(opts)), f"XDP query on ifindex {ifindex}")
    return XDP_ATTACHED_MODES.get(int(opts.attach_mode), ""), int(opts.prog_id)

"""XDP attachment through libbpf: the receive side at XDP instead of TC ingress.

An interface holds one XDP program per mode. Native (driver) mode runs in the
driver before any skb exists; generic mode runs in the stack on the skb, on any
interface, at a higher cost per packet. `attach` tries native first when asked
for "auto" and falls back to generic, and says which one it got: the two see
the same frames (before GRO and VLAN offload) but cost differently.

Like the TC filters, attaching replaces our own program in place (no window
without a hook); a program of someone else's on the interface is refused, not
replaced, and detach removes only a program that is ours.

Every call works in the calling thread's network namespace (the manager runs
them through its `TcAttacher.run`).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from enum import StrEnum

from sennet.agent.datapath import layout
from sennet.agent.datapath import netlink_attach as nl
from sennet.agent.datapath.libbpf import BpfError, libbpf
from sennet.common.errors import UserError
from sennet.common.log import event

log = logging.getLogger("sennet.agent.xdp")

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2


class XdpMode(StrEnum):
    """What the `xdp_mode` setting asks for."""

    AUTO = "auto"  # native where the driver supports it, else generic
    NATIVE = "native"
    GENERIC = "generic"


_FLAGS = {XdpMode.NATIVE: XDP_FLAGS_DRV_MODE, XdpMode.GENERIC: XDP_FLAGS_SKB_MODE}


@dataclass(frozen=True)
class XdpState:
    """The XDP program on an interface as the kernel reports it (mode "" = none)."""

    mode: str
    prog_id: int


def query(ifindex: int) -> XdpState:
    """The interface's XDP mode and program id, as the kernel reports them."""
    mode, prog_id = nl.xdp_query(ifindex)
    return XdpState(mode, prog_id)


def program_name(prog_id: int) -> str:
    """The name of a loaded BPF program by id ("" when it cannot be read: opening a
    program by id needs CAP_SYS_ADMIN, which an agent that gave up root lacks)."""
    try:
        return libbpf().prog_name_by_id(prog_id)
    except BpfError:
        return ""


def ours(state: XdpState, own_fd: int) -> bool:
    """The attached program is Sennet's: the one we loaded (known by id without any
    privilege), or one named sennet_xdp (a previous agent's, replaced at start as root)."""
    if not state.mode:
        return False
    if own_fd >= 0 and state.prog_id == libbpf().prog_id(own_fd):
        return True
    return program_name(state.prog_id) == layout.PROGRAM_XDP


def attach(ifindex: int, prog_fd: int, mode: XdpMode) -> str:
    """Attach (or replace ours) in the mode asked for; returns "native" or "generic"."""
    now = query(ifindex)
    if now.mode and not ours(now, prog_fd):
        raise UserError(
            f"interface {ifindex} already has an XDP program (id {now.prog_id}) that is not ours",
            hint="remove it (ip link set dev IF xdp off), or use attach = tc",
        )
    tries = [XdpMode.NATIVE, XdpMode.GENERIC] if mode == XdpMode.AUTO else [mode]
    if now.mode in ("native", "generic") and mode == XdpMode.AUTO:
        # Ours already: keep the mode it has (the kernel allows one mode at a time).
        tries = [XdpMode(now.mode)]
    last: BpfError | None = None
    for want in tries:
        try:
            nl.xdp_attach(ifindex, prog_fd, _FLAGS[want])
        except BpfError as err:
            last = err
            event(
                log, "xdp_mode_refused", logging.INFO, ifindex=ifindex, mode=want, error=err.errno
            )
            continue
        return str(want)
    code = last.errno if last is not None and last.errno else errno.EINVAL
    raise UserError(f"XDP attach on interface {ifindex} failed: {errno.errorcode.get(code, code)}")


def detach(ifindex: int, own_fd: int) -> bool:
    """Remove the interface's XDP program if it is ours; True if one was removed."""
    now = query(ifindex)
    if now.mode not in ("native", "generic") or not ours(now, own_fd):
        return False
    try:
        nl.xdp_detach(ifindex, _FLAGS[XdpMode(now.mode)])
    except BpfError as err:
        if err.errno == errno.ENODEV:
            return False
        raise
    return True


def rx_hook(ifindex: int) -> str:
    """Where the receive side is counted on an interface, as the kernel has it now:
    "xdp-native" or "xdp-generic" when our XDP program is attached, else "tc"."""
    now = query(ifindex)
    if ours(now, -1):
        return f"xdp-{now.mode}"
    return "tc"

"""`sennet-agent status`: read the pinned maps directly, with or without a running agent."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from sennet.agent.counters import CounterReader
from sennet.agent.datapath import layout, slots, xdp
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.pins import check_pinned_maps, open_pinned
from sennet.agent.tcp_health import read_counters
from sennet.common.netns import entered


def _ifname(ifindex: int, netns: str) -> str:
    """Name in the agent's network namespace (ifindexes are per namespace)."""
    try:
        with entered(netns):
            return socket.if_indextoname(ifindex)
    except OSError:
        return f"ifindex-{ifindex}"


def _rx_hook(ifindex: int) -> str:
    try:
        socket.if_indextoname(ifindex)  # libbpf's query reports "no XDP" for a missing link
        return xdp.rx_hook(ifindex)
    except OSError:  # gone since
        return "gone"


def _rx_hooks(ifindexes: list[int], netns: str) -> dict[int, str]:
    """The receive hook of each interface (TC or XDP, and the XDP mode), from the kernel."""
    with entered(netns):
        return {ifindex: _rx_hook(ifindex) for ifindex in ifindexes}


def read_status(pin_dir: Path, netns: str = "", configured: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the pinned maps hold; `configured` interfaces without a counter slot are listed
    as `not_attached` (an agent waits for an interface that does not exist yet)."""
    check_pinned_maps(pin_dir)
    fds = open_pinned(pin_dir)
    try:
        reader = CounterReader(fds)
        interfaces = []
        slot_of = sorted(slots.read_slots(fds[layout.MAP_IFSLOTS]).items())
        hooks = _rx_hooks([ifindex for ifindex, _ in slot_of], netns)
        for ifindex, slot in slot_of:
            totals = reader.slot_totals(slot)
            interfaces.append(
                {
                    "ifname": _ifname(ifindex, netns),
                    "ifindex": ifindex,
                    "slot": slot,
                    "rx_hook": hooks[ifindex],
                    **{
                        f"{d.label}_{field}": getattr(totals[d], field)
                        for d in layout.Direction
                        for field in ("packets", "bytes")
                    },
                }
            )
        unmapped = reader.slot_totals(layout.UNMAPPED_SLOT)
        registered = {i["ifname"] for i in interfaces}
        return {
            "pin_dir": str(pin_dir),
            "interfaces": interfaces,
            "not_attached": [name for name in configured if name not in registered],
            "unmapped_packets": sum(t.packets for t in unmapped.values()),
            "events_by_kind": {k.label: v for k, v in reader.by_kind(layout.MAP_EV_COUNTS).items()},
            "ringbuf_drops_by_kind": {
                k.label: v for k, v in reader.by_kind(layout.MAP_RB_DROPS).items()
            },
            "tcp": {
                k.name.lower(): v
                for k, v in read_counters(
                    fds[layout.MAP_TCP_COUNTERS], libbpf().possible_cpus()
                ).items()
            },
        }
    finally:
        for fd in fds.values():
            os.close(fd)


def render(status: dict[str, Any]) -> str:
    lines = [f"pinned maps: {status['pin_dir']}", ""]
    lines.append(
        f"{'interface':<16}{'rx hook':>12}{'rx packets':>14}{'rx bytes':>16}"
        f"{'tx packets':>14}{'tx bytes':>16}"
    )
    for i in status["interfaces"]:
        lines.append(
            f"{i['ifname']:<16}{i['rx_hook']:>12}{i['rx_packets']:>14}{i['rx_bytes']:>16}"
            f"{i['tx_packets']:>14}{i['tx_bytes']:>16}"
        )
    if not status["interfaces"]:
        lines.append("(no interfaces registered)")
    for name in status.get("not_attached", ()):
        lines.append(f"{name:<16}not attached (configured; attached when it appears)")
    lines.append("")
    lines.append(f"{'event kind':<16}{'detected':>12}{'ring drops':>12}")
    for kind, n in status["events_by_kind"].items():
        lines.append(f"{kind:<16}{n:>12}{status['ringbuf_drops_by_kind'][kind]:>12}")
    lines.append("")
    lines.append(f"{'tcp':<16}{'total':>12}")
    for name, n in status["tcp"].items():
        lines.append(f"{name:<16}{n:>12}")
    if status["unmapped_packets"]:
        lines.append(f"\nwarning: {status['unmapped_packets']} packets on unregistered interfaces")
    return "\n".join(lines)

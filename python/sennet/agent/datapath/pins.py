"""Pinned maps: check what is pinned before trusting it, and open it for read-out."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.common.errors import UserError


def check_pinned_maps(
    pin_dir: Path, ringbuf_bytes: int | None = None, sizes: Mapping[str, int] | None = None
) -> None:
    """Fail naming the map and the field if a pinned map's shape differs from this build's.

    Loaders would otherwise refuse with a bare EINVAL, or worse, a bcc build
    would read a map of another layout. With `ringbuf_bytes`, a pinned ring
    buffer must also have that size (libbpf cannot resize a pinned map); so must
    the maps sized at load time, with their sizes in `sizes` (without, any size
    is accepted for them).
    """
    lb = libbpf()
    specs = dict(layout.MAP_SPECS)
    if ringbuf_bytes is not None:
        specs[layout.MAP_EVENTS] = (layout.BPF_MAP_TYPE_RINGBUF, 0, 0, ringbuf_bytes)
    for name in layout.SIZED_AT_LOAD:
        mtype, key_size, value_size, _ = specs[name]
        specs[name] = (mtype, key_size, value_size, (sizes or {}).get(name, -1))
    for name, (mtype, key_size, value_size, max_entries) in specs.items():
        path = pin_dir / name
        if not path.exists():
            continue
        fd = lb.obj_get(str(path))
        try:
            info = lb.map_info(fd)
        finally:
            os.close(fd)
        want = {"type": mtype, "key_size": key_size, "value_size": value_size}
        if max_entries >= 0:
            want["max_entries"] = max_entries
        for field, expected in want.items():
            actual = getattr(info, field)
            if actual != expected:
                raise UserError(
                    f"pinned map {path} has {field} {actual}, this build expects {expected}",
                    hint=f"remove the old pins (sennet-agent reset --pin-dir {pin_dir})",
                )


def open_pinned(pin_dir: Path) -> dict[str, int]:
    """Open the pinned maps (without loading anything); the caller closes the fds."""
    lb = libbpf()
    fds: dict[str, int] = {}
    try:
        for name in layout.PINNED_MAPS:
            fds[name] = lb.obj_get(str(pin_dir / name))
    except FileNotFoundError as exc:
        for fd in fds.values():
            os.close(fd)
        raise UserError(
            f"no Sennet maps pinned in {pin_dir}",
            hint="is the agent running (or has it run) with this pin_dir?",
        ) from exc
    return fds


def unpin_early(pin_dir: Path) -> list[str]:
    """Remove `pin_dir/early` and what the boot-time loader pinned in it (programs that
    are attached keep running: their filters hold them)."""
    early = pin_dir / layout.EARLY_DIR
    if not early.is_dir():
        return []
    removed = []
    for entry in sorted(early.iterdir()):
        entry.unlink()
        removed.append(f"{layout.EARLY_DIR}/{entry.name}")
    early.rmdir()
    return removed


def remove_pins(pin_dir: Path) -> list[str]:
    """Unpin every Sennet map in `pin_dir`; counters restart from zero on the next load."""
    removed = unpin_early(pin_dir)
    for name in (*layout.PINNED_MAPS, layout.MAP_EVENTS):
        path = pin_dir / name
        if path.exists():
            path.unlink()
            removed.append(name)
    if pin_dir.is_dir() and not any(pin_dir.iterdir()):
        pin_dir.rmdir()
    return removed

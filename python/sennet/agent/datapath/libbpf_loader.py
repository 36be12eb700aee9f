"""Default loader: the precompiled object, opened and loaded through libbpf.

Needs no compiler and no kernel headers, which is why the appliance uses it.
Pinned maps are reused when they exist (libbpf checks compatibility), so a
restarted agent continues the same counters; tunables are written into
.rodata between open and load.
"""

from __future__ import annotations

import ctypes
import logging
import struct
from pathlib import Path

from sennet.agent import marks
from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import BpfError, libbpf
from sennet.agent.datapath.loader_types import DatapathOptions, LoadedDatapath
from sennet.agent.datapath.pins import check_pinned_maps
from sennet.common.errors import UserError
from sennet.common.log import event

log = logging.getLogger("sennet.agent.datapath")

OBJECT_NAME = layout.OBJECT_NAME


def load(opts: DatapathOptions, object_name: str = OBJECT_NAME) -> LoadedDatapath:
    """Open, configure, load; return program and map fds. Raises UserError with libbpf's log."""
    lb = libbpf()
    path = opts.assets_dir / object_name
    if not path.is_file():
        raise UserError(
            f"BPF object {path} not found",
            hint="build it with bpf/build.sh, or set bpf_dir to where the objects are",
        )
    check_pinned_maps(opts.pin_dir, opts.ringbuf_bytes, opts.map_sizes())
    lb.take_log()
    obj = lb.check_ptr(lb.lib.bpf_object__open_file(str(path).encode(), None), f"open {path}")
    try:
        _configure(obj, opts)
        try:
            lb.check(lb.lib.bpf_object__load(obj), f"load {path}")
        except BpfError as exc:
            raise _explain(exc, path, opts.pin_dir) from exc
        progs = {layout.PROGRAM_XDP: -1}
        wanted = (layout.PROGRAM_INGRESS, layout.PROGRAM_EGRESS)
        for name in (*wanted, layout.PROGRAM_XDP) if opts.xdp else wanted:
            prog = lb.check_ptr(
                lb.lib.bpf_object__find_program_by_name(obj, name.encode()), f"program {name}"
            )
            progs[name] = lb.check(lb.lib.bpf_program__fd(prog), f"fd of {name}")
        map_fds = {}
        for name in (*layout.PINNED_MAPS, layout.MAP_EVENTS, *layout.FLOW_MAPS):
            m = lb.check_ptr(lb.lib.bpf_object__find_map_by_name(obj, name.encode()), f"map {name}")
            map_fds[name] = lb.check(lb.lib.bpf_map__fd(m), f"fd of map {name}")
    except BaseException:
        lb.lib.bpf_object__close(obj)
        raise
    event(
        log,
        "bpf_loaded",
        loader="libbpf",
        object=str(path),
        pin_dir=str(opts.pin_dir),
        uptime=marks.uptime(),
    )
    return LoadedDatapath(
        loader="libbpf",
        ingress_fd=progs[layout.PROGRAM_INGRESS],
        egress_fd=progs[layout.PROGRAM_EGRESS],
        map_fds=map_fds,
        ringbuf_bytes=opts.ringbuf_bytes,
        close=lambda: lb.lib.bpf_object__close(obj),
        xdp_fd=progs[layout.PROGRAM_XDP],
    )


def load_program(path: Path, program: str) -> tuple[int, object]:
    """Load a standalone object (benchmarks); returns (prog fd, a closer)."""
    lb = libbpf()
    obj = lb.check_ptr(lb.lib.bpf_object__open_file(str(path).encode(), None), f"open {path}")
    lb.check(lb.lib.bpf_object__load(obj), f"load {path}")
    prog = lb.check_ptr(lb.lib.bpf_object__find_program_by_name(obj, program.encode()), program)
    return lb.check(lb.lib.bpf_program__fd(prog), program), lambda: lb.lib.bpf_object__close(obj)


def _configure(obj: int, opts: DatapathOptions) -> None:
    lb = libbpf()
    spec = opts.load_spec()
    for name in spec.pinned:
        m = lb.check_ptr(lb.lib.bpf_object__find_map_by_name(obj, name.encode()), f"map {name}")
        lb.check(lb.lib.bpf_map__set_pin_path(m, str(opts.pin_dir / name).encode()), f"pin {name}")
    for name, size in spec.max_entries.items():
        m = lb.check_ptr(lb.lib.bpf_object__find_map_by_name(obj, name.encode()), f"map {name}")
        lb.check(lb.lib.bpf_map__set_max_entries(m, size), f"size of {name}")
    for name in spec.skipped:
        prog = lb.check_ptr(
            lb.lib.bpf_object__find_program_by_name(obj, name.encode()), f"program {name}"
        )
        lb.check(lb.lib.bpf_program__set_autoload(prog, False), f"autoload of {name}")
    _set_tunables(obj, spec.tunables)


def _set_tunables(obj: int, values: dict[str, int]) -> None:
    """Write `const volatile` globals in .rodata; the verifier then treats them as constants."""
    lb = libbpf()
    rodata = None
    m = lb.lib.bpf_object__next_map(obj, None)
    while m:
        if (lb.lib.bpf_map__name(m) or b"").endswith(b".rodata"):
            rodata = m
            break
        m = lb.lib.bpf_object__next_map(obj, m)
    if rodata is None:
        raise UserError("BPF object has no .rodata section: was it built from sennet_tc.bpf.c?")
    size = ctypes.c_size_t()
    base = lb.check_ptr(lb.lib.bpf_map__initial_value(rodata, ctypes.byref(size)), ".rodata")
    offsets = lb.datasec_offsets(obj, ".rodata")
    for name, value in values.items():
        if name not in offsets:
            raise UserError(f"BPF object lacks tunable {name}: rebuild it (bpf/build.sh)")
        off, width = offsets[name]
        if width != 4 or off + 4 > size.value:
            raise UserError(f"tunable {name} has size {width}, expected a 4-byte __u32")
        ctypes.memmove(base + off, struct.pack("<I", value), 4)


def _explain(exc: BpfError, path: Path, pin_dir: Path) -> UserError:
    if "reuse pinned map" in exc.log or "couldn't reuse" in exc.log:
        return UserError(
            f"maps pinned in {pin_dir} do not match {path.name}: {exc.log.splitlines()[-1]}",
            hint=f"remove the old pins (sennet-agent reset --pin-dir {pin_dir}) to start from zero",
        )
    tail = "\n".join(exc.log.splitlines()[-25:])
    return UserError(f"the kernel refused {path.name}: {exc.strerror}\n{tail}")

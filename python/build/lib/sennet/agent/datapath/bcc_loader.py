"""Second loader: bcc compiles the same C source at run time.

For hosts without the build step: edit a .bpf.c, restart the agent. bcc needs
kernel headers (/lib/modules/$(uname -r)/build) and learns the pin directory,
ring size and tunables from -D flags (see bpf/compat.h). The ring buffer is
not pinned in this mode (bcc cannot pin BPF_RINGBUF_OUTPUT); counters are.

bcc rewrites map method calls (`MAP.lookup()`) only in the text it is given,
never in an included file, so the loader hands it one text: the program with
each of its own `#include "..."` headers inlined (once, in order).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import re
from pathlib import Path
from typing import Any

from sennet.agent.datapath import layout
from sennet.agent.datapath.loader_types import DatapathOptions, LoadedDatapath
from sennet.agent.datapath.pins import check_pinned_maps
from sennet.common.errors import UserError
from sennet.common.log import event

log = logging.getLogger("sennet.agent.datapath")

SOURCE_NAME = "sennet_tc.bpf.c"
PROGRAM_FEATURES = "sennet_features"  # bcc only: flows, TCP health, DNS, by tail call
PROGRAM_FEATURES_XDP = "sennet_features_xdp"  # the same, tail-called from the XDP program
LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.]+)"[ \t]*$', re.MULTILINE)


def inline_local_includes(source: Path) -> str:
    """The program text with every local `#include "x.h"` replaced by the header itself."""
    seen: set[str] = set()

    def expand(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in seen:
                return f"/* {name}: already included */"
            seen.add(name)
            header = source.parent / name
            if not header.is_file():
                raise UserError(f"{source}: included header {header} not found")
            return f"/* ---- {name} ---- */\n" + expand(header.read_text())

        return LOCAL_INCLUDE.sub(one, text)

    return expand(source.read_text())


def load(opts: DatapathOptions) -> LoadedDatapath:
    try:
        from bcc import BPF
    except ImportError as exc:
        raise UserError(
            "the bcc loader needs the bcc Python module",
            hint="apt-get install python3-bpfcc, and run from a venv with --system-site-packages",
        ) from exc
    source = opts.assets_dir.resolve() / SOURCE_NAME
    if not source.is_file():
        raise UserError(f"BPF source {source} not found", hint="set bpf_dir to the bpf/ folder")
    headers = Path("/lib/modules") / os.uname().release / "build"
    if not headers.exists():
        raise UserError(
            f"bcc needs kernel headers at {headers}",
            hint="install linux-headers for this kernel, or use the default libbpf loader",
        )
    check_pinned_maps(opts.pin_dir, sizes=opts.map_sizes())
    cflags = [
        "-DSENNET_BCC",
        f"-I{opts.assets_dir.resolve()}",
        f'-DSENNET_PIN_DIR="{opts.pin_dir}"',
        f"-DSENNET_RINGBUF_PAGES={opts.ringbuf_bytes // mmap.PAGESIZE}",
        f"-D{layout.TUNABLE_LARGE_PACKET}={opts.large_packet_bytes}",
        f"-DSENNET_TCP_HANDSHAKES={opts.tcp_handshakes}",
        f"-DSENNET_FLOW_CAPACITY={opts.flow_capacity}",
    ]
    try:
        bpf: Any = BPF(text=inline_local_includes(source).encode(), cflags=cflags)
        # The features program first: a packet the hooks see before its slot is
        # filled is counted but skips the features (see bpf/sennet_tc.bpf.c).
        features = bpf.load_func(PROGRAM_FEATURES.encode(), BPF.SCHED_CLS)
        bpf[b"FEATURES"][ctypes.c_int(0)] = ctypes.c_int(features.fd)
        features_xdp = bpf.load_func(PROGRAM_FEATURES_XDP.encode(), BPF.XDP)
        bpf[b"FEATURES_XDP"][ctypes.c_int(0)] = ctypes.c_int(features_xdp.fd)
        ingress = bpf.load_func(layout.PROGRAM_INGRESS.encode(), BPF.SCHED_CLS)
        egress = bpf.load_func(layout.PROGRAM_EGRESS.encode(), BPF.SCHED_CLS)
        xdp = bpf.load_func(layout.PROGRAM_XDP.encode(), BPF.XDP)
    except Exception as exc:  # bcc raises bare Exception; its compiler output went to stderr
        raise UserError(f"bcc could not build {source}: {exc}") from exc
    map_fds = {
        name: int(bpf[name.encode()].map_fd)
        for name in (*layout.PINNED_MAPS, layout.MAP_EVENTS, *layout.FLOW_MAPS)
    }
    event(log, "bpf_loaded", loader="bcc", source=str(source), pin_dir=str(opts.pin_dir))
    return LoadedDatapath(
        loader="bcc",
        ingress_fd=int(ingress.fd),
        egress_fd=int(egress.fd),
        map_fds=map_fds,
        ringbuf_bytes=opts.ringbuf_bytes,
        close=bpf.cleanup,
        xdp_fd=int(xdp.fd),
    )

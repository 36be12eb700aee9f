"""The agent's flow reader alone in a process, for bench/flows.py: CPU per read and peak RSS.

Started by bench/flows.py with the FLOWS and FLOW_STATS map fds inherited, so
what it measures is the reader as the agent runs it (FlowTracker: batched
lookups, the join against the previous read, top talkers) without the benchmark's own table-filling
buffers in its memory. Between timed reads it bumps every flow's counters in
chunks (untimed), so every read finds a million deltas, not an idle table.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import ctypes
import json
import resource
import sys
import time
from array import array
from pathlib import Path

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.flows import CHUNK, FlowTracker


def bump(fd: int, round_no: int) -> int:
    """Add traffic to every flow, chunk by chunk (memory bounded like the reader's own)."""
    lb = libbpf()
    keys = bytearray(CHUNK * layout.FLOW_KEY.itemsize)
    vals = bytearray(CHUNK * layout.FLOW.itemsize)
    keys_at, vals_at = _address(keys), _address(vals)
    words = memoryview(vals).cast("Q")  # struct sennet_flow as u64 words
    stride = layout.FLOW.itemsize // 8
    at = {f: layout.FLOW.offset(f) // 8 for f in ("packets", "bytes", "last_ns")}
    token = ctypes.create_string_buffer(64)
    first, total = True, 0
    now = time.monotonic_ns()
    while True:
        n, done = lb.lookup_batch(fd, token, keys_at, vals_at, CHUNK, first)
        first = False
        if n:
            end = n * stride
            col = {f: slice(a, end, stride) for f, a in at.items()}
            words[col["packets"]] = array("Q", [p + 1 for p in words[col["packets"]].tolist()])
            words[col["bytes"]] = array(
                "Q",
                [
                    b + 64 + (i * 7919 + total) % 1000 + round_no
                    for i, b in enumerate(words[col["bytes"]].tolist())
                ],
            )
            words[col["last_ns"]] = array("Q", [now]) * n
            lb.update_batch(fd, keys_at, vals_at, n)
            total += n
        if done:
            return total


def _address(buf: bytearray) -> int:
    """Where `buf`'s bytes are, for the kernel (the bytearray is not resized meanwhile)."""
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str]) -> int:
    flows_fd, stats_fd, reads = int(argv[1]), int(argv[2]), int(argv[3])
    before = rss_kib()
    t0 = time.process_time()
    tracker = FlowTracker(flows_fd, stats_fd, top_n=10, idle_timeout_s=3600.0)
    first_cpu = time.process_time() - t0
    cpu, wall, active, talkers = [], [], 0, 0
    for r in range(reads):
        bump(flows_fd, r)
        t0, w0 = time.process_time(), time.perf_counter()
        report = tracker.read({})
        cpu.append(time.process_time() - t0)
        wall.append(time.perf_counter() - w0)
        active, talkers = report.active, len(report.top_talkers)
    out = {
        "first_read_cpu_s": first_cpu,
        "read_cpu_s": cpu,
        "read_wall_s": wall,
        "active": active,
        "top_talkers": talkers,
        "rss_before_kib": before,
        "rss_after_kib": rss_kib(),
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

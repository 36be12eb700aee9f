"""The agent's flow reader alone in a process, for bench/flows.py: CPU per read and peak RSS.

Started by bench/flows.py with the FLOWS and FLOW_STATS map fds inherited, so
what it measures is the reader as the agent runs it (FlowTracker: batched
lookups, numpy joins, top talkers) without the benchmark's own table-filling
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
from pathlib import Path

import numpy as np

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.flows import CHUNK, FlowTracker


def bump(fd: int, round_no: int) -> int:
    """Add traffic to every flow, chunk by chunk (memory bounded like the reader's own)."""
    lb = libbpf()
    keys = np.zeros(CHUNK, layout.FLOW_KEY_DTYPE)
    vals = np.zeros(CHUNK, layout.FLOW_DTYPE)
    token = ctypes.create_string_buffer(64)
    first, total = True, 0
    now = time.monotonic_ns()
    while True:
        n, done = lb.lookup_batch(fd, token, keys.ctypes.data, vals.ctypes.data, CHUNK, first)
        first = False
        if n:
            spread = (np.arange(n, dtype=np.uint64) * np.uint64(7919) + np.uint64(total)) % 1000
            vals["packets"][:n] += np.uint64(1)
            vals["bytes"][:n] += np.uint64(64) + spread + np.uint64(round_no)
            vals["last_ns"][:n] = now
            lb.update_batch(fd, keys.ctypes.data, vals.ctypes.data, n)
            total += n
        if done:
            return total


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

"""Flow benchmark: per-packet cost with 1, 10,000 and 1,000,000 live flows; the agent's read.

Run as root from the repository root:

    .venv/bin/python bench/flows.py            # table on stdout, progress on stderr
    .venv/bin/python bench/flows.py --json     # one JSON object per figure per line

Per-packet cost (BPF_PROG_TEST_RUN, ns per run, kernel-timed) of `sennet_ingress`
on a plain TCP data segment whose flow is in the table, beside two programs
measured in the same rounds: the empty program (bpf/bench_empty.bpf.c) and the
program as it was before flows (built from the git revision BASELINE_REV into
a temporary directory). The table is filled to each size between phases with
BPF_MAP_UPDATE_BATCH (distinct IPv4 flows); the measured packet's own flow is
created by its first run. Afterwards its flow must hold exactly one packet per
run, or no figure is valid.

Agent read: with a million live flows in the table, bench/flow_reader.py (a
process of its own, the map fds inherited) builds the agent's FlowTracker and
reads the table several times, every flow's counters bumped in between; it
reports CPU seconds per read (user + system, so the batch syscalls count) and
its peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from sennet.agent.config import DEFAULT_ASSETS
from sennet.agent.datapath import layout, libbpf_loader
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.loader_types import DatapathOptions
from sennet.common.errors import UserError
from sennet.common.proc import run
from sennet.testing.errors import HarnessError
from sennet.testing.figures import Figure, median, report
from sennet.testing.netlab import bpffs

import lab

REPO = Path(__file__).resolve().parents[1]
BASELINE_REV = "b861e37^"  # the data plane before flows, DNS and TCP health
SIZES = (1, 10_000, 1_000_000)
FILL_CHUNK = 65536
# 2**20: room for a million flows, and the hash has 2**20 buckets (a batch read walks every
# bucket; 1,100,000 entries would round the buckets up to 2**21 and double that walk).
CAPACITY = 1 << 20
TC_ACT_UNSPEC = 0xFFFFFFFF


def tcp_segment() -> bytes:
    """A plain data segment (ACK+PSH, 100 bytes of payload), 154 bytes on the wire."""
    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="192.0.2.1", dst="198.51.100.1")
        / TCP(sport=40000, dport=443, flags="PA", seq=1000, ack=1)
        / Raw(b"d" * 100)
    )


@contextlib.contextmanager
def baseline_program() -> Iterator[int]:
    """sennet_ingress as built from BASELINE_REV: today's program without the new features."""
    with tempfile.TemporaryDirectory(prefix="sennet-baseline-") as tmp:
        tar = Path(tmp) / "bpf.tar"
        run(
            ["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(tar), BASELINE_REV, "bpf"]
        )
        run(["tar", "-xf", str(tar), "-C", tmp])
        run(["sh", f"{tmp}/bpf/build.sh", f"{tmp}/out"])
        fd, close = libbpf_loader.load_program(
            Path(tmp) / "out" / "sennet_tc.bpf.o", "sennet_ingress"
        )
        try:
            yield fd
        finally:
            close()  # type: ignore[operator]


def fill(fd: int, start: int, stop: int) -> None:
    """Insert flows start..stop-1 (distinct source addresses) in chunks."""
    lb = libbpf()
    now = time.monotonic_ns()
    key = layout.FLOW_KEY.struct
    daddr = bytes((10, 255, 0, 1)).ljust(16, b"\0")
    value = layout.FLOW.pack(packets=1, bytes=100, first_ns=now, last_ns=now)
    for lo in range(start, stop, FILL_CHUNK):
        idx = range(lo, min(stop, lo + FILL_CHUNK))
        keys = bytearray().join(
            key.pack(
                bytes((10, i >> 16 & 0xFF, i >> 8 & 0xFF, i & 0xFF)),  # padded to 16 by "16s"
                daddr, 1, 1024 + (i & 0x7FFF), 80, 0, 4, 6, 0, b"",
            )
            for i in idx
        )  # fmt: skip
        vals = bytearray(value * len(idx))
        lb.update_batch(fd, _address(keys), _address(vals), len(idx))


def _address(buf: bytearray) -> int:
    """Where `buf`'s bytes are, for the kernel (the bytearray is not resized meanwhile)."""
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def count_flows(fd: int) -> int:
    lb = libbpf()
    keys = bytearray(FILL_CHUNK * layout.FLOW_KEY.itemsize)
    vals = bytearray(FILL_CHUNK * layout.FLOW.itemsize)
    token = bytearray(64)
    buf = _address(token)
    first, total = True, 0
    while True:
        n, done = lb.lookup_batch(fd, buf, _address(keys), _address(vals), FILL_CHUNK, first)
        first, total = False, total + n
        if done:
            return total


def own_flow_packets(fd: int, frame: bytes) -> int:
    """Packets in the measured segment's flow, looked up by its exact key."""
    key = layout.FLOW_KEY.pack(
        saddr=frame[26:30].ljust(16, b"\0"),
        daddr=frame[30:34].ljust(16, b"\0"),
        sport=int.from_bytes(frame[34:36]),
        dport=int.from_bytes(frame[36:38]),
        ifindex=1,  # test runs use lo
        ip_version=4,
        l4_proto=6,
    )
    raw = libbpf().lookup(fd, key, layout.FLOW.itemsize)
    return 0 if raw is None else int(layout.FLOW.unpack(raw)["packets"])  # type: ignore[arg-type]


def measure(pin_root: Path, rounds: int, repeat: int) -> list[Figure]:
    """Per-packet cost at each table size, then the agent's read of the full table."""
    lb = libbpf()
    frame = tcp_segment()
    figures: list[Figure] = []
    stack = contextlib.ExitStack()
    empty = stack.enter_context(lab.empty_program())
    base = stack.enter_context(baseline_program())
    pin_dir = pin_root / "flows"
    pin_dir.mkdir()
    dp = libbpf_loader.load(
        DatapathOptions(DEFAULT_ASSETS, pin_dir, 1 << 16, 1514, flow_capacity=CAPACITY)
    )
    stack.callback(dp.close)
    flows_fd = dp.map_fds[layout.MAP_FLOWS]
    runs = 0
    filled = 1  # the segment's own flow, created by its first run
    how = f"median of {rounds} rounds x {repeat:,} runs"
    with stack:
        for size in SIZES:
            fill(flows_fd, filled, size)
            filled = size
            samples: dict[str, list[int]] = {"empty": [], "before_flows": [], "flows": []}
            for _ in range(rounds):
                for name, fd in (
                    ("empty", empty),
                    ("before_flows", base),
                    ("flows", dp.ingress_fd),
                ):
                    retval, ns, _ = lb.test_run(fd, frame, repeat)
                    if retval != TC_ACT_UNSPEC:
                        raise HarnessError(f"{name}: returned {retval:#x}, not TC_ACT_UNSPEC")
                    samples[name].append(ns)
                runs += repeat
            live = count_flows(flows_fd)
            if live != size:
                raise HarnessError(f"{live:,} flows in the table, expected {size:,}")
            lab.note(f"cost: measured with {live:,} live flows")
            e = Figure(f"flows.cost.empty.{size}", median(samples["empty"]), "ns/packet", how)
            b = Figure(
                f"flows.cost.before_flows.{size}", median(samples["before_flows"]), "ns/packet", how
            )
            f = Figure(f"flows.cost.flows.{size}", median(samples["flows"]), "ns/packet", how)
            ratio = [x / max(y, 1) for x, y in zip(samples["flows"], samples["empty"], strict=True)]
            ratio_b = [
                x / max(y, 1)
                for x, y in zip(samples["before_flows"], samples["empty"], strict=True)
            ]
            figures += [
                e,
                b,
                f,
                Figure(f"flows.cost.ratio.{size}", median(ratio), "x", "goal <= 2.5", e),
                Figure(f"flows.cost.before_flows_ratio.{size}", median(ratio_b), "x", "", e),
            ]
        got = own_flow_packets(flows_fd, frame)
        if got != runs:
            raise HarnessError(
                f"the measured flow holds {got} packets, expected {runs}: a run missed it"
            )
        figures += reader(dp.map_fds[layout.MAP_FLOWS], dp.map_fds[layout.MAP_FLOW_STATS])
    return figures


def reader(flows_fd: int, stats_fd: int, reads: int = 3) -> list[Figure]:
    """Run bench/flow_reader.py on the filled table; its figures."""
    lab.note(f"agent read: {reads} reads of a million live flows in a separate process")
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("flow_reader.py")),
            str(flows_fd),
            str(stats_fd),
            str(reads),
        ],
        pass_fds=(flows_fd, stats_fd),
        capture_output=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise HarnessError(f"flow_reader failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    r = json.loads(proc.stdout)
    if r["active"] < SIZES[-1] or r["top_talkers"] != 10:
        raise HarnessError(f"flow_reader saw {r['active']} flows, {r['top_talkers']} talkers")
    how = f"median of {reads} reads, {r['active']:,} flows, all changed since the last read"
    return [
        Figure("flows.read.cpu", median(r["read_cpu_s"]), "s", how + "; goal <= 0.5"),
        Figure("flows.read.wall", median(r["read_wall_s"]), "s", how),
        Figure(
            "flows.read.first_cpu",
            r["first_read_cpu_s"],
            "s",
            "the first read (takes the table in)",
        ),
        Figure(
            "flows.read.peak_rss", r["peak_rss_kib"] / 1024, "MiB", "reader process; goal <= 200"
        ),
        Figure(
            "flows.read.rss_before",
            r["rss_before_kib"] / 1024,
            "MiB",
            "same process before the tracker",
        ),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/flows.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per figure per line")
    p.add_argument(
        "--rounds", type=int, default=9, help="interleaved rounds per table size (default 9)"
    )
    p.add_argument(
        "--repeat", type=int, default=100_000, help="runs per test_run call (default 100000)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if os.geteuid() != 0:
            raise UserError("the benchmark needs root (BPF)")
        with (
            lab.sigterm_as_interrupt(),
            tempfile.TemporaryDirectory(prefix="sennet-bench-") as tmp,
            bpffs(Path(tmp)) as pins,
            lab.pinned_to({1}),
        ):
            figures = measure(pins, args.rounds, args.repeat)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except HarnessError as exc:
        print(f"harness error (no figure is valid): {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; everything created was removed", file=sys.stderr)
        return 130
    print(report(figures, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What each data-plane feature costs, in BPF_PROG_TEST_RUN and in the real veth receive path.

Run as root from the repository root:

    .venv/bin/python bench/features.py            # table on stdout, progress on stderr
    .venv/bin/python bench/features.py --json     # one JSON object per figure per line

Variants of `sennet_ingress`, all loaded the agent's way (libbpf_loader) and
differing only in the load-time switch `cfg_features` (bpf/sennet_tc.h:
SENNET_FEAT_*): `counters` (none: counters and events only), each feature alone
on top of the counters, and `all` (the default). Beside them, in the same
rounds: the empty program (bpf/bench_empty.bpf.c) and `before_counters` and
`before_all`, the object built from `--baseline` (default BASELINE_REV: before
the short path a plain frame takes with every feature after the counters off)
loaded the same way, so one run shows before and after side by side.

`cost`: each variant on a 64-byte UDP frame, a 154-byte TCP data segment and the
same segment over IPv6 (174 bytes), kernel-timed. `warm` is one test_run call of
`repeat` runs on the same skb (the program, its maps and the skb stay in the
caches), reported by the kernel in whole nanoseconds; `wall` is the same call
timed from user space, divided by `repeat` (the syscall and the skb's set-up
are under 0.05 ns per run at this repeat), for the ratio to the empty program
at a finer resolution than one nanosecond; `single` is the median of
single runs (repeat 1: the syscall around each run leaves the caches lukewarm);
`cold` the same, each run after a sweep of SWEEP_BYTES through memory, which
evicts the maps and the program from every cache level (an upper bound: the
rest of a real receive path evicts less).

`path`: trafgen floods 64-byte frames into a veth pair (bench/throughput.py);
each variant in turn is attached at TC ingress of the receiver. With kernel BPF
statistics on (BPF_ENABLE_STATS: the kernel times every run of every program),
`run_ns` is the program's own time per packet inside the veth receive path;
then, with statistics off, the received rate and the path CPU per packet
(sender plus receive softirq). `vs_empty` is the rate over the empty program's
in the same round (goal >= 0.98). With `--linear` the path runs again with
scatter-gather off on the sender's veth: trafgen's frames then arrive linear
(`tpacket_snd` otherwise leaves all but the Ethernet header in a page
fragment), as a NIC driver's do, and the headers are read in place.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

import ablate
import flows
from sennet.agent.config import DEFAULT_ASSETS
from sennet.agent.datapath import layout, libbpf_loader, tc
from sennet.agent.datapath.layout import Feature
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.loader_types import DatapathOptions
from sennet.common.errors import UserError
from sennet.common.proc import run
from sennet.common.retry import retry
from sennet.testing.errors import HarnessError
from sennet.testing.figures import Figure, median, report
from sennet.testing.netlab import bpffs, veth_pair

import lab
import throughput
import wire

REPO = Path(__file__).resolve().parents[1]
BASELINE_REV = "c62eae1"  # before the short path's straight line for IPv4 UDP
SWEEP_BYTES = 16 << 20  # larger than the last-level cache of the machines we run on
TC_ACT_UNSPEC = 0xFFFFFFFF
FEATURE_SETS: dict[str, Feature] = {
    "counters": Feature(0),
    "bursts": Feature.BURSTS,
    "flows": Feature.FLOWS,
    "tcp": Feature.TCP,
    "dns": Feature.DNS,
    "all": layout.FEATURES_ALL,
}
BASELINE_SETS = ("counters", "all")  # loaded from the baseline object too, as before_<name>
PATH_VARIANTS = ("empty", "before_counters", "counters", "before_all", "all")


@dataclass(frozen=True)
class Variant:
    name: str
    fd: int


@contextlib.contextmanager
def built_from(rev: str) -> Iterator[Path]:
    """A directory holding sennet_tc.bpf.o as built from git revision `rev` (deleted after)."""
    with tempfile.TemporaryDirectory(prefix="sennet-before-") as tmp:
        tar = Path(tmp) / "bpf.tar"
        run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(tar), rev, "bpf"])
        run(["tar", "-xf", str(tar), "-C", tmp])
        run(["sh", f"{tmp}/bpf/build.sh", f"{tmp}/out"])
        yield Path(tmp) / "out"


def load_variants(
    stack: contextlib.ExitStack, pin_root: Path, baseline: str, ablations: Sequence[str]
) -> list[Variant]:
    """The empty program, then one load per feature set of today's object and, for the
    counters alone and the default, of the object built from `baseline`, all the agent's way;
    then each of `ablations` (bench/ablate.py) with the counters alone (or the feature
    ablate.LOADED_WITH names), as ablate_<name>."""
    out = [Variant("empty", stack.enter_context(lab.empty_program()))]
    old_assets = stack.enter_context(built_from(baseline))
    loads = [(name, DEFAULT_ASSETS, features) for name, features in FEATURE_SETS.items()]
    loads += [(f"before_{name}", old_assets, FEATURE_SETS[name]) for name in BASELINE_SETS]
    for name, assets in stack.enter_context(ablate.built(ablations)).items():
        features = FEATURE_SETS[ablate.LOADED_WITH.get(name, "counters")]
        loads.append((f"ablate_{name}", assets, features))
    for name, assets, features in loads:
        pin_dir = pin_root / name
        pin_dir.mkdir()
        dp = libbpf_loader.load(DatapathOptions(assets, pin_dir, 1 << 16, 1514, features=features))
        stack.callback(dp.close)
        out.append(Variant(name, dp.ingress_fd))
    return out


def tcp6_segment() -> bytes:
    """flows.tcp_segment() over IPv6: a plain data segment, 174 bytes on the wire."""
    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IPv6(src="2001:db8::1", dst="2001:db8::2")
        / TCP(sport=40000, dport=443, flags="PA", seq=1000, ack=1)
        / Raw(b"d" * 100)
    )


def _sweep(buf: np.ndarray) -> None:
    buf += 1  # read and write every line: the caches now hold this buffer, not the program


def measure_cost(variants: list[Variant], rounds: int, repeat: int, cold_runs: int) -> list[Figure]:
    """Warm (repeat N) and cold (repeat 1 after a cache sweep) ns per run, per variant and frame."""
    lb = libbpf()
    frames = {
        "udp64": wire.udp_frame(wire.SMALL_FRAME),
        "tcp154": flows.tcp_segment(),
        "tcp6_174": tcp6_segment(),
    }
    sweep = np.zeros(SWEEP_BYTES // 8, np.uint64)
    warm: dict[tuple[str, str], list[int]] = {}
    wall: dict[tuple[str, str], list[float]] = {}
    cold: dict[tuple[str, str], list[int]] = {}
    single: dict[tuple[str, str], list[int]] = {}
    for r in range(rounds):
        lab.note(f"cost: round {r + 1}/{rounds}")
        for v in variants if r % 2 == 0 else variants[::-1]:  # see measure_path()
            for fname, frame in frames.items():
                t0 = time.perf_counter_ns()
                retval, ns, _ = lb.test_run(v.fd, frame, repeat)
                wall.setdefault((v.name, fname), []).append((time.perf_counter_ns() - t0) / repeat)
                if retval != TC_ACT_UNSPEC:
                    raise HarnessError(f"{v.name}: returned {retval:#x}, not TC_ACT_UNSPEC")
                warm.setdefault((v.name, fname), []).append(ns)
                for _ in range(cold_runs // rounds):
                    single.setdefault((v.name, fname), []).append(lb.test_run(v.fd, frame, 1)[1])
                    _sweep(sweep)
                    cold.setdefault((v.name, fname), []).append(lb.test_run(v.fd, frame, 1)[1])
    out: list[Figure] = []
    how = f"median of {rounds} rounds x {repeat:,} runs"
    for fname in frames:
        empty = Figure(f"features.cost.empty.{fname}", median(warm["empty", fname]), "ns", how)
        empty_cold = Figure(
            f"features.cold.empty.{fname}", median(cold["empty", fname]), "ns", "single runs"
        )
        empty_single = Figure(
            f"features.single.empty.{fname}", median(single["empty", fname]), "ns", "repeat 1"
        )
        empty_wall = Figure(
            f"features.wall.empty.{fname}", median(wall["empty", fname]), "ns", "wall / repeat"
        )
        out += [empty, empty_wall, empty_single, empty_cold]
        for v in variants[1:]:
            w, c = warm[v.name, fname], cold[v.name, fname]
            ratio = [a / max(b, 1) for a, b in zip(w, warm["empty", fname], strict=True)]
            wall_ratio = [
                a / b for a, b in zip(wall[v.name, fname], wall["empty", fname], strict=True)
            ]
            out += [
                Figure(f"features.cost.{v.name}.{fname}", median(w), "ns", how),
                Figure(
                    f"features.cost_ratio.{v.name}.{fname}",
                    median(ratio),
                    "x",
                    "per round; goal <= 1.3",
                    empty,
                ),
                Figure(f"features.wall.{v.name}.{fname}", median(wall[v.name, fname]), "ns", how),
                Figure(
                    f"features.wall_ratio.{v.name}.{fname}",
                    median(wall_ratio),
                    "x",
                    "per round, wall clock / repeat",
                    empty_wall,
                ),
                Figure(
                    f"features.single.{v.name}.{fname}",
                    median(single[v.name, fname]),
                    "ns",
                    f"median of {len(c)} single runs (repeat 1), no sweep",
                    empty_single,
                ),
                Figure(
                    f"features.cold.{v.name}.{fname}",
                    median(c),
                    "ns",
                    f"median of {len(c)} single runs after a {SWEEP_BYTES >> 20} MiB sweep",
                    empty_cold,
                ),
            ]
    return out


def _run_stats(prog_id: int) -> tuple[int, int]:
    """(run_cnt, run_time_ns) of a program, as the kernel's BPF statistics hold them."""
    proc = subprocess.run(
        ["bpftool", "--json", "prog", "show", "id", str(prog_id)],
        capture_output=True,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    info = json.loads(proc.stdout)
    return int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0))


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """Kernel BPF run-time statistics on for the block (BPF_ENABLE_STATS via the sysctl)."""
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = knob.read_text().strip()
    knob.write_text("1\n")
    try:
        yield
    finally:
        knob.write_text(before + "\n")


def measure_path(
    variants: list[Variant], rounds: int, window_s: float, linear: bool = False
) -> list[Figure]:
    """Each variant at TC ingress of a flooded veth: in-path ns per run, rate, path CPU.

    `linear`: the sender's veth without scatter-gather, so the kernel makes each of
    trafgen's frames linear before it crosses (as a NIC's driver leaves the headers
    in the linear part) and the program reads the headers in place, not through
    bpf_skb_load_bytes; the figures are then named path_linear."""
    chosen = [v for v in variants if v.name in PATH_VARIANTS or v.name.startswith("ablate_")]
    ids = {v.name: libbpf().prog_id(v.fd) for v in chosen}
    frame = wire.udp_frame(wire.SMALL_FRAME)
    run_ns: dict[str, list[float]] = {v.name: [] for v in chosen}
    wins: dict[str, list[throughput.Window]] = {v.name: [] for v in chosen}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sennet-bench-")))
        veth = stack.enter_context(veth_pair(mtu=1500, if_b="gen0", prefix="snfeat"))
        if linear:
            run(["ip", "netns", "exec", veth.ns_b, "ethtool", "-K", veth.if_b, "sg", "off"])
        attacher = tc.TcAttacher(1, veth.ns_a)
        stack.callback(attacher.close)
        ifindex = attacher.ifindex(veth.if_a)
        counters = throughput.Counters(veth)
        stack.callback(counters.close)
        sender = stack.enter_context(throughput.trafgen(veth, frame, work))
        clock = throughput.PathClock(sender.pid)

        def flowing(last: bool) -> bool | None:
            if sender.poll() is not None:
                raise UserError(f"trafgen exited with {sender.returncode}")
            return True if throughput._window(counters, clock, 0.1).packets > 0 else None

        retry(flowing, timeout=10, what="trafgen flooding the veth pair")
        attacher.ensure_clsact(ifindex)
        stack.callback(attacher.remove_clsact_if_empty, ifindex)
        for r in range(rounds):
            lab.note(f"path: round {r + 1}/{rounds}")
            # Every other round in reverse: a variant's place in the round biases its
            # figures (measured: 15-30 ns for the one attached after another), and the
            # alternation cancels that in the medians.
            for v in chosen if r % 2 == 0 else chosen[::-1]:
                attacher.attach(ifindex, tc.PARENT_INGRESS, v.fd, f"sennet_{v.name}")
                try:
                    time.sleep(throughput.SETTLE_S)
                    with bpf_stats():
                        n0, t0 = _run_stats(ids[v.name])
                        time.sleep(window_s)
                        n1, t1 = _run_stats(ids[v.name])
                    run_ns[v.name].append((t1 - t0) / max(n1 - n0, 1))
                    wins[v.name].append(throughput._window(counters, clock, window_s))
                finally:
                    attacher.detach(ifindex, tc.PARENT_INGRESS)
    prefix = "features.path_linear" if linear else "features.path"
    return _path_figures(run_ns, wins, rounds, window_s, prefix)


def _path_figures(
    run_ns: dict[str, list[float]],
    wins: dict[str, list[throughput.Window]],
    rounds: int,
    window_s: float,
    prefix: str,
) -> list[Figure]:
    how = f"median of {rounds} windows of {window_s:g} s"
    out: list[Figure] = []
    empty_run = Figure(f"{prefix}.empty.run_ns", median(run_ns["empty"]), "ns", how)
    empty_pps = median([w.pps for w in wins["empty"]])
    empty_rate = Figure(f"{prefix}.empty.rate", empty_pps, "packets/s", how)
    out += [
        empty_run,
        empty_rate,
        Figure(
            f"{prefix}.empty.path_cpu",
            median([w.path_ns for w in wins["empty"]]),
            "ns/packet",
            "sender+softirq CPU",
        ),
    ]
    for name in run_ns:
        if name == "empty":
            continue
        per = [a.pps / max(b.pps, 1) for a, b in zip(wins[name], wins["empty"], strict=True)]
        cpu = [a.path_ns - b.path_ns for a, b in zip(wins[name], wins["empty"], strict=True)]
        listed = " ".join(f"{x:.3f}" for x in per)
        out += [
            Figure(f"{prefix}.{name}.run_ns", median(run_ns[name]), "ns", how, empty_run),
            Figure(
                f"{prefix}.{name}.vs_empty",
                median(per),
                "ratio",
                f"goal >= 0.98; per round: {listed}",
                empty_rate,
            ),
            Figure(
                f"{prefix}.{name}.path_cpu_over_empty",
                median(cpu),
                "ns/packet",
                "per-round difference of sender+softirq CPU",
            ),
        ]
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/features.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per figure per line")
    p.add_argument("--only", choices=("cost", "path"), help="run only this phase")
    p.add_argument(
        "--linear",
        action="store_true",
        help="also run the path with linear frames (the sender's veth without scatter-gather)",
    )
    p.add_argument("--rounds", type=int, default=9, help="interleaved cost rounds (default 9)")
    p.add_argument("--repeat", type=int, default=100_000, help="runs per warm call (100000)")
    p.add_argument("--cold-runs", type=int, default=270, help="cold single runs per case (270)")
    p.add_argument("--path-rounds", type=int, default=5, help="rounds of path windows (5)")
    p.add_argument("--window", type=float, default=1.0, help="seconds per path window (1.0)")
    p.add_argument(
        "--baseline",
        default=BASELINE_REV,
        help=f"git revision whose object is measured as before_* (default {BASELINE_REV})",
    )
    p.add_argument(
        "--ablate",
        action="append",
        default=[],
        choices=list(ablate.ABLATIONS),
        help="also measure today's object with this part taken out (bench/ablate.py; repeatable)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    figures: list[Figure] = []
    try:
        if os.geteuid() != 0:
            raise UserError("the benchmark needs root (BPF, TC, network namespaces)")
        with (
            lab.sigterm_as_interrupt(),
            tempfile.TemporaryDirectory(prefix="sennet-bench-") as tmp,
            bpffs(Path(tmp)) as pins,
            contextlib.ExitStack() as stack,
        ):
            variants = load_variants(stack, pins, args.baseline, args.ablate)
            if args.only in (None, "cost"):
                with lab.pinned_to({1}):
                    figures += measure_cost(variants, args.rounds, args.repeat, args.cold_runs)
            if args.only in (None, "path"):
                figures += measure_path(variants, args.path_rounds, args.window)
                if args.linear:
                    figures += measure_path(variants, args.path_rounds, args.window, linear=True)
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

"""Data-plane benchmark: per-packet BPF cost, veth throughput ratio, ring-buffer drain rate.

Run as root from the repository root:

    .venv/bin/python bench/datapath.py            # table on stdout, progress on stderr
    .venv/bin/python bench/datapath.py --json     # one JSON object per figure per line

All three figures are measured in one run, each against a baseline taken in
that same run (the empty program, the bare veth path, the 1 M events/s goal),
because on a shared two-core machine only side-by-side numbers mean anything.
Everything the run creates (a private bpffs, two network namespaces, a veth
pair, trafgen) is removed on exit, also on failure, Ctrl-C or SIGTERM.
See bench/README.md for what each figure means and what limits it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence

from sennet.agent.config import DEFAULT_ASSETS
from sennet.common.errors import UserError
from sennet.testing.errors import HarnessError
from sennet.testing.figures import Figure, report
from sennet.testing.netlab import bpffs

import cost
import drain
import lab
import throughput

PHASES = ("cost", "throughput", "drain")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/datapath.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=(
            "Figures: cost.* = ns per program run (BPF_PROG_TEST_RUN, median of interleaved "
            "rounds) and overhead over the empty program of the same hook (TC and XDP side by "
            "side); throughput.* = 64-byte frames/s received across a veth pair with the "
            "programs attached (TC ingress, or XDP native) vs none (goal ratio >= 0.95); "
            "drain.* = events/s the Python consumer drains, with produced == consumed "
            "+ dropped checked exactly (goal >= 1,000,000/s on one core). Default run: about "
            "a minute. Needs root, trafgen (netsniff-ng) and the BPF objects (bpf/build.sh)."
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per figure per line")
    p.add_argument(
        "--only", choices=PHASES, action="append", help="run only this phase (repeatable)"
    )
    p.add_argument("--cost-rounds", type=int, default=15, help="interleaved rounds (default 15)")
    p.add_argument(
        "--cost-repeat", type=int, default=200_000, help="runs per test_run call (default 200000)"
    )
    p.add_argument(
        "--tput-rounds",
        type=int,
        default=7,
        help="rounds of sennet/xdp/empty/bare windows (default 7)",
    )
    p.add_argument(
        "--tput-window", type=float, default=1.5, help="seconds per throughput window (default 1.5)"
    )
    p.add_argument(
        "--drain-seconds", type=float, default=4.0, help="seconds per drain run (default 4)"
    )
    p.add_argument(
        "--drain-rate",
        type=int,
        default=1_000_000,
        help="events/s offered in the paced drain run (default 1000000)",
    )
    return p.parse_args(argv)


def preflight(phases: Sequence[str]) -> None:
    """Fail in one line, before creating anything, when the run cannot work."""
    if os.geteuid() != 0:
        raise UserError("the benchmark needs root (BPF, TC, network namespaces)")
    for obj in ("sennet_tc.bpf.o", "bench_empty.bpf.o"):
        if not (DEFAULT_ASSETS / obj).is_file():
            raise UserError(f"{DEFAULT_ASSETS / obj} is missing", hint="run bpf/build.sh")
    if "throughput" in phases and shutil.which("trafgen") is None:
        raise UserError("trafgen not found", hint="apt-get install netsniff-ng")
    if "drain" in phases and len(os.sched_getaffinity(0)) < 2:
        raise UserError("the drain benchmark needs two CPUs (producer and consumer)")


def run(args: argparse.Namespace) -> list[Figure]:
    phases = args.only or list(PHASES)
    preflight(phases)
    figures: list[Figure] = []
    with lab.sigterm_as_interrupt(), bpffs() as pin_root:
        if "cost" in phases:
            lab.note(f"cost: {args.cost_rounds} rounds x 12 cases x {args.cost_repeat:,} runs")
            with lab.pinned_to({1}):
                figures += cost.measure(pin_root, args.cost_rounds, args.cost_repeat)
        if "throughput" in phases:
            lab.note(
                f"throughput: {args.tput_rounds} rounds x 4 windows x {args.tput_window:g} s "
                "(trafgen on CPU 0)"
            )
            with lab.pinned_to({1}):  # trafgen and the receive softirq have CPU 0 to themselves
                figures += throughput.measure(pin_root, args.tput_rounds, args.tput_window)
        if "drain" in phases:
            lab.note(f"drain: saturated and paced, {args.drain_seconds:g} s each")
            figures += drain.measure(pin_root, args.drain_seconds, args.drain_rate)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        figures = run(args)
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

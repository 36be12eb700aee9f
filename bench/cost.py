"""Figure 1: per-packet cost of each program, TC and XDP side by side, with BPF_PROG_TEST_RUN.

The kernel runs a program `repeat` times on one skb built from our frame and
reports the mean time per run, measured in the kernel and paused while the
task is rescheduled, so it is not inflated by other load on a shared machine.
Its resolution is 1 ns (the kernel divides with integer arithmetic).

Every case runs once per round and rounds repeat (A B C A B C ...), so slow
drifts of the machine (frequency, neighbours) hit all cases alike; the figure
is the median over rounds, and an overhead is the median of the per-round
differences against the empty program measured in that same round.

The event path reserves ring-buffer space, so it has two costs: with room in
the ring (reserve + copy + submit; the ring is drained, untimed, after every
call, and sized so one call never fills it) and with the ring full (a failed
reserve and a bump of RB_DROPS). Both are shown; afterwards the counters must
prove that every timed run took the path it claims.

The XDP program (sennet_xdp, the receive side with `attach = xdp`) runs the
same handle() as sennet_ingress; its overhead is taken against an empty XDP
program, as the TC ones are against an empty TC program. XDP's test run builds
no skb, so the absolute figures also show what the hook itself costs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sennet.agent.counters import CounterReader
from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.loader_types import LoadedDatapath
from sennet.agent.events import RingBufferConsumer
from sennet.testing.errors import HarnessError
from sennet.testing.figures import Figure, median

import lab
import wire

TC_ACT_UNSPEC = 0xFFFFFFFF  # -1 as the kernel reports it: "carry on as if no filter ran"
XDP_PASS = 2


@dataclass(frozen=True)
class Case:
    name: str
    prog_fd: int
    frame: bytes
    after: Callable[[], None] | None = None  # untimed work after each call (draining)
    expect: int = TC_ACT_UNSPEC  # the return code of a program that lets the packet pass


def _rounds(cases: list[Case], rounds: int, repeat: int) -> dict[str, list[int]]:
    lb = libbpf()
    samples: dict[str, list[int]] = {c.name: [] for c in cases}
    for _ in range(rounds):
        for c in cases:
            retval, ns, _ = lb.test_run(c.prog_fd, c.frame, repeat)
            if retval != c.expect:
                raise HarnessError(f"{c.name}: program returned {retval:#x}, not {c.expect:#x}")
            samples[c.name].append(ns)
            if c.after is not None:
                c.after()
    return samples


def measure(pin_root: Path, rounds: int, repeat: int) -> list[Figure]:
    """Load the programs, time every case, check the paths taken, return the figures."""
    small = wire.udp_frame(wire.SMALL_FRAME)
    large = wire.udp_frame(wire.LARGE_FRAME)
    room_ring = lab.ring_bytes_for(repeat + 1, layout.RECORD_SIZE)
    with contextlib.ExitStack() as stack:
        empty = stack.enter_context(lab.empty_program())
        empty_xdp = stack.enter_context(lab.empty_program("sennet_empty_xdp"))
        dp = stack.enter_context(lab.datapath(pin_root, "cost", room_ring, wire.LARGE_THRESHOLD))
        full = stack.enter_context(lab.datapath(pin_root, "full", 1 << 16, wire.LARGE_THRESHOLD))
        consumer = RingBufferConsumer(dp.map_fds[layout.MAP_EVENTS], room_ring)
        stack.callback(lab.close_consumer, consumer)

        def drain() -> None:
            consumer.drain()

        # Fill the small ring once: from here on every reserve on it fails.
        libbpf().test_run(full.ingress_fd, large, 4 * (1 << 16) // layout.RECORD_SIZE)
        full_drops0 = _total(CounterReader(full.map_fds), layout.MAP_RB_DROPS)
        cases = [
            Case("empty.small", empty, small),
            Case("ingress.small", dp.ingress_fd, small),
            Case("egress.small", dp.egress_fd, small),
            Case("empty.large", empty, large),
            Case("ingress.large_event", dp.ingress_fd, large, drain),
            Case("egress.large_event", dp.egress_fd, large, drain),
            Case("ingress.large_ring_full", full.ingress_fd, large),
            Case("egress.large_ring_full", full.egress_fd, large),
            Case("empty_xdp.small", empty_xdp, small, expect=XDP_PASS),
            Case("xdp.small", dp.xdp_fd, small, expect=XDP_PASS),
            Case("empty_xdp.large", empty_xdp, large, expect=XDP_PASS),
            Case("xdp.large_event", dp.xdp_fd, large, drain, expect=XDP_PASS),
        ]
        samples = _rounds(cases, rounds, repeat)
        _check_paths(dp, full, consumer, full_drops0, rounds * repeat)
    return _figures(samples, rounds, repeat)


def _total(reader: CounterReader, map_name: str) -> int:
    return sum(reader.by_kind(map_name).values())


def _check_paths(
    dp: LoadedDatapath,
    full: LoadedDatapath,
    consumer: RingBufferConsumer,
    full_drops0: int,
    runs_per_case: int,
) -> None:
    """Each large case ran `runs_per_case` times: every one must show as an event or a drop."""
    reader = CounterReader(dp.map_fds)
    detected, dropped = _total(reader, layout.MAP_EV_COUNTS), _total(reader, layout.MAP_RB_DROPS)
    consumed = consumer.stats().consumed
    # three cases (ingress, egress, xdp) emit into `dp`; the small frame must emit nothing
    if detected != 3 * runs_per_case or consumed != detected or dropped:
        raise HarnessError(
            f"ring-has-room path: {detected} detected, {consumed} consumed, {dropped} dropped; "
            f"expected {3 * runs_per_case} events, all consumed"
        )
    full_drops = _total(CounterReader(full.map_fds), layout.MAP_RB_DROPS) - full_drops0
    if full_drops != 2 * runs_per_case:
        raise HarnessError(f"ring-full path: {full_drops} drops, expected {2 * runs_per_case}")


def _figures(samples: dict[str, list[int]], rounds: int, repeat: int) -> list[Figure]:
    how = f"median of {rounds} rounds x {repeat:,} runs"
    out: list[Figure] = []
    base: dict[str, Figure] = {}
    for empty_name in ("empty", "empty_xdp"):
        for size in ("small", "large"):
            key = f"{empty_name}.{size}"
            empty = Figure(f"cost.{key}", median(samples[key]), "ns/packet", how)
            base[key] = empty
            out.append(empty)
    for name, values in samples.items():
        if name.startswith("empty"):
            continue
        size = "small" if name.endswith(".small") else "large"
        key = f"{'empty_xdp' if name.startswith('xdp.') else 'empty'}.{size}"
        fig = Figure(f"cost.{name}", median(values), "ns/packet", how)
        diffs = [v - e for v, e in zip(values, samples[key], strict=True)]
        over = Figure(
            f"cost.{name}.overhead",
            median(diffs),
            "ns/packet",
            "median of per-round differences",
            base[key],
        )
        out += [fig, over]
    return out

"""Figure 3: how fast the agent's Python consumer drains the ring buffer, nothing unaccounted.

Producer: sennet_ingress run by BPF_PROG_TEST_RUN with a large `repeat` on a
1514-byte frame; every run emits exactly one large_packet event. ctypes drops
the GIL for the syscall, so a producer thread costs the consumer nothing but
a brief GIL hand-over between calls (calls are long, so that is rare).
Producer and consumer threads are pinned to different CPUs.

Two runs:
- saturated: the producer runs flat out (several million events/s, faster
  than any Python consumer) and the consumer (RingBufferConsumer.drain, the
  agent's code, in a busy loop) takes what it can; the ring fills, the
  kernel counts what did not fit in RB_DROPS. consumed/s is then the
  consumer's ceiling, on one core.
- paced: the producer offers a fixed rate (default 1 M events/s, the goal) in
  short bursts, and the consumer runs the agent's own loop
  (RingBufferConsumer.run: epoll plus a timer). This shows what keeping up
  costs: drops (should be 0) and the share of a core used.
- backlog: the ring is filled with no consumer running, then drained alone
  (repeated, median): the consumer's own ceiling, not bounded by how much
  CPU the producer gets on a shared machine.

After each run: produced (EV_COUNTS, what the programs detected) must equal
consumed (the consumer's count) + dropped (RB_DROPS), exactly; otherwise the
harness raises and no figure is printed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
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

PRODUCER_CPU, CONSUMER_CPU = 0, 1
RING_BYTES = 64 << 20  # about 930,000 records: half a second of slack at the paced rate
SATURATED_CHUNK = 500_000  # runs per test_run call: ~0.1-0.2 s, so GIL hand-overs are rare
BACKLOG_FILLS = 5  # full rings drained alone
PACED_BURST_S = 0.01  # the paced producer offers rate * 10 ms every 10 ms


@dataclass(frozen=True)
class Outcome:
    produced: int
    consumed: int
    dropped: int
    wall_s: float
    consumer_cpu_s: float


class _Tally:
    """EV_COUNTS / RB_DROPS / consumer totals, as deltas from the start of a run."""

    def __init__(self, reader: CounterReader, consumer: RingBufferConsumer) -> None:
        self.reader, self.consumer = reader, consumer
        self.start = self._now()

    def _now(self) -> tuple[int, int, int]:
        detected = sum(self.reader.by_kind(layout.MAP_EV_COUNTS).values())
        dropped = sum(self.reader.by_kind(layout.MAP_RB_DROPS).values())
        return detected, self.consumer.stats().consumed, dropped

    def delta(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self._now(), strict=True))  # type: ignore[return-value]


def _pinned_thread(
    cpu: int, body: Callable[[], None], errors: list[BaseException]
) -> threading.Thread:
    def run() -> None:
        try:
            os.sched_setaffinity(0, {cpu} & os.sched_getaffinity(0) or os.sched_getaffinity(0))
            body()
        except BaseException as exc:  # reported by the caller, after join
            errors.append(exc)

    return threading.Thread(target=run, daemon=True)


def _run(
    dp: LoadedDatapath,
    consumer: RingBufferConsumer,
    produce: Callable[[threading.Event], None],
    consume: Callable[[threading.Event], None],
) -> Outcome:
    tally = _Tally(CounterReader(dp.map_fds), consumer)
    done = threading.Event()
    errors: list[BaseException] = []
    cpu: list[float] = []

    def producer() -> None:
        try:
            produce(done)
        finally:
            done.set()

    def timed_consumer() -> None:
        t0 = time.thread_time()
        consume(done)
        cpu.append(time.thread_time() - t0)

    threads = [
        _pinned_thread(CONSUMER_CPU, timed_consumer, errors),
        _pinned_thread(PRODUCER_CPU, producer, errors),
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # short joins keep Ctrl-C responsive
    except BaseException:
        done.set()  # Ctrl-C: stop both, and let them leave the ring before it is unmapped
        for t in threads:
            t.join(5)
        raise
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    produced, consumed, dropped = tally.delta()
    if produced != consumed + dropped:
        raise HarnessError(
            f"unaccounted events: produced {produced} != consumed {consumed} + dropped {dropped}"
        )
    return Outcome(produced, consumed, dropped, wall, cpu[0])


def measure(pin_root: Path, seconds: float, paced_rate: int) -> list[Figure]:
    """Saturated and paced runs against one loaded datapath; return the figures."""
    lb = libbpf()
    frame = wire.udp_frame(wire.LARGE_FRAME)
    with contextlib.ExitStack() as stack:
        dp = stack.enter_context(lab.datapath(pin_root, "drain", RING_BYTES, wire.LARGE_THRESHOLD))
        consumer = RingBufferConsumer(dp.map_fds[layout.MAP_EVENTS], RING_BYTES)
        stack.callback(lab.close_consumer, consumer)

        def flat_out(done: threading.Event) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not done.is_set():
                lb.test_run(dp.ingress_fd, frame, SATURATED_CHUNK)

        def busy_drain(done: threading.Event) -> None:
            while not done.is_set():
                consumer.drain()
            consumer.drain()

        saturated = _run(dp, consumer, flat_out, busy_drain)

        burst = max(1, int(paced_rate * PACED_BURST_S))

        def paced(done: threading.Event) -> None:
            start = time.monotonic()
            for i in range(int(seconds / PACED_BURST_S)):
                if done.is_set():
                    return
                lb.test_run(dp.ingress_fd, frame, burst)
                pause = start + (i + 1) * PACED_BURST_S - time.monotonic()
                if pause > 0:
                    time.sleep(pause)

        def agent_loop(done: threading.Event) -> None:
            consumer.run(done)  # the agent's own loop: epoll + 50 ms timer, final drain on stop

        steady = _run(dp, consumer, paced, agent_loop)
        backlog = [_backlog(dp, consumer, frame) for _ in range(BACKLOG_FILLS)]
    return _figures(saturated, steady, paced_rate) + _backlog_figures(backlog)


def _backlog(dp: LoadedDatapath, consumer: RingBufferConsumer, frame: bytes) -> Outcome:
    """Fill the ring with no consumer running, then time draining it: the consumer alone.

    In the concurrent runs a consumer that keeps up only shows the producer's
    rate (which on a shared machine is often whatever CPU 0 has left); a full
    ring drained with no producer running shows the consumer's own ceiling.
    """
    fill = RING_BYTES // layout.RECORD_SIZE - 1

    cpu: list[float] = []
    wall: list[float] = []

    def consume() -> None:
        t0, w0 = time.thread_time(), time.perf_counter()
        while consumer.drain():
            pass
        cpu.append(time.thread_time() - t0)
        wall.append(time.perf_counter() - w0)

    tally = _Tally(CounterReader(dp.map_fds), consumer)
    libbpf().test_run(dp.ingress_fd, frame, fill)  # one event per run, into an empty ring
    errors: list[BaseException] = []
    t = _pinned_thread(CONSUMER_CPU, consume, errors)
    t.start()
    while t.is_alive():
        t.join(0.2)
    if errors:
        raise errors[0]
    produced, consumed, dropped = tally.delta()
    if produced != consumed + dropped or produced != fill:
        raise HarnessError(
            f"backlog: produced {produced} (expected {fill}) != consumed {consumed} + "
            f"dropped {dropped}"
        )
    return Outcome(produced, consumed, dropped, wall[0], cpu[0])


def _backlog_figures(runs: list[Outcome]) -> list[Figure]:
    goal = Figure("drain.goal", 1_000_000, "events/s", "issue 2: one core")
    rates = [o.consumed / o.wall_s for o in runs]
    per_cpu = [o.consumed / max(o.consumer_cpu_s, 1e-9) for o in runs]
    n = runs[0].consumed
    return [
        Figure(
            "drain.backlog.rate",
            median(rates),
            "events/s",
            f"full ring ({n:,} events) drained alone, median of {len(runs)}",
            goal,
        ),
        Figure(
            "drain.backlog.per_cpu_second",
            median(per_cpu),
            "events/cpu-s",
            "same, per second of consumer CPU time",
            goal,
        ),
        Figure(
            "drain.backlog.unaccounted",
            sum(o.produced - o.consumed - o.dropped for o in runs),
            "events",
            "produced - consumed - dropped",
        ),
    ]


def _figures(sat: Outcome, paced: Outcome, paced_rate: int) -> list[Figure]:
    def per_million(o: Outcome) -> float:
        return o.consumer_cpu_s / max(o.consumed, 1) * 1e6

    goal = Figure("drain.goal", 1_000_000, "events/s", "issue 2: one core")
    return [
        Figure(
            "drain.saturated.consumed_rate",
            sat.consumed / sat.wall_s,
            "events/s",
            f"busy drain() on CPU {CONSUMER_CPU}; {sat.consumed:,} events in {sat.wall_s:.2f} s",
            goal,
        ),
        Figure(
            "drain.saturated.per_cpu_second",
            1e6 / max(per_million(sat), 1e-9),
            "events/cpu-s",
            "a lower bound: includes polls of an empty ring",
            goal,
        ),
        Figure("drain.saturated.produced_rate", sat.produced / sat.wall_s, "events/s", "test_run"),
        Figure("drain.saturated.dropped", sat.dropped, "events", "ring full (RB_DROPS)"),
        Figure(
            "drain.saturated.unaccounted",
            sat.produced - sat.consumed - sat.dropped,
            "events",
            "produced - consumed - dropped",
        ),
        Figure(
            "drain.saturated.cpu_per_million",
            per_million(sat),
            "cpu-s/M events",
            "consumer thread CPU time",
        ),
        Figure(
            "drain.paced.offered_rate",
            paced.produced / paced.wall_s,
            "events/s",
            f"target {paced_rate:,}/s in 10 ms bursts",
        ),
        Figure(
            "drain.paced.consumed_rate",
            paced.consumed / paced.wall_s,
            "events/s",
            "RingBufferConsumer.run (epoll + timer)",
        ),
        Figure("drain.paced.dropped", paced.dropped, "events", "ring full (RB_DROPS)"),
        Figure(
            "drain.paced.unaccounted",
            paced.produced - paced.consumed - paced.dropped,
            "events",
            "produced - consumed - dropped",
        ),
        Figure(
            "drain.paced.cpu_share",
            paced.consumer_cpu_s / paced.wall_s,
            "cores",
            "consumer thread CPU time / wall time",
        ),
        Figure(
            "drain.paced.cpu_per_million",
            per_million(paced),
            "cpu-s/M events",
            "consumer thread CPU time",
        ),
    ]

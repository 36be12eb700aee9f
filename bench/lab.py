"""What only the data-plane benchmarks need: the datapath loaded the agent's way, the empty
program, ring sizing, CPU pinning, and SIGTERM handled like Ctrl-C.

Namespaces, veth pairs and bpffs mounts come from `sennet.testing.netlab`, shared
with the tests and the main job. Everything here lives inside a context manager
and is released on the way out, also after an exception or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from sennet.agent.config import DEFAULT_ASSETS
from sennet.agent.datapath import libbpf_loader
from sennet.agent.datapath.loader_types import DatapathOptions, LoadedDatapath
from sennet.agent.events import RingBufferConsumer


def note(message: str) -> None:
    """Progress on stderr, so stdout stays the table (or the JSON lines)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so every `finally` below runs on `kill` as on Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def datapath(pin_root: Path, tag: str, ringbuf_bytes: int, large: int) -> Iterator[LoadedDatapath]:
    """sennet_tc.bpf.o loaded the agent's way (libbpf_loader), pins in its own subdirectory."""
    pin_dir = pin_root / tag
    pin_dir.mkdir()
    loaded = libbpf_loader.load(DatapathOptions(DEFAULT_ASSETS, pin_dir, ringbuf_bytes, large))
    try:
        yield loaded
    finally:
        loaded.close()


def close_consumer(consumer: RingBufferConsumer) -> None:
    """Unmap a consumer's ring; if a view of it is still referenced (an interrupted drain), leave
    the mapping to process exit instead of masking the interruption with a BufferError."""
    try:
        consumer.close()
    except BufferError:
        note("ring mapping still in use after an interruption; released at exit")


@contextlib.contextmanager
def empty_program(name: str = "sennet_empty") -> Iterator[int]:
    """A do-nothing program (bpf/bench_empty.bpf.c: sennet_empty at TC, sennet_empty_xdp at
    XDP): the fixed cost of running any program at that hook."""
    fd, close = libbpf_loader.load_program(DEFAULT_ASSETS / "bench_empty.bpf.o", name)
    try:
        yield fd
    finally:
        close()  # type: ignore[operator]


def ring_bytes_for(records: int, record_size: int) -> int:
    """The smallest power-of-two ring (at least 64 KiB) that holds `records` without wrapping."""
    size = 1 << 16
    while size < records * record_size:
        size <<= 1
    return size


@contextlib.contextmanager
def pinned_to(cpus: set[int]) -> Iterator[None]:
    """Run the calling thread on `cpus` for a while (Linux affinity is per thread)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus & before or before)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)

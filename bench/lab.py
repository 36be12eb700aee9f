"""Benchmark-owned kernel objects: a private bpffs, network namespaces, a veth pair.

The benchmark runs as root on a shared machine, so everything it creates gets a
random name, lives only inside a context manager, and is removed on the way
out, also after an exception or Ctrl-C. Nothing that already existed is
touched. The patterns match python/tests/netlab.py; they are repeated here
(not imported) because bench code must not depend on the test tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from sennet.agent.config import DEFAULT_ASSETS
from sennet.agent.datapath import libbpf_loader
from sennet.agent.datapath.loader_types import DatapathOptions, LoadedDatapath
from sennet.agent.events import RingBufferConsumer
from sennet.common.errors import UserError
from sennet.common.netns import entered
from sennet.common.proc import run


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
def private_bpffs() -> Iterator[Path]:
    """A bpf filesystem mounted on a fresh temp dir: throwaway pins that never meet the agent's."""
    root = Path(tempfile.mkdtemp(prefix="sennet-bench-"))
    mounted = False
    try:
        run(["mount", "-t", "bpf", "bpf", str(root)])
        mounted = True
        yield root
    finally:
        if mounted:
            run(["umount", "-l", str(root)], check=False)
        with contextlib.suppress(OSError):
            root.rmdir()


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
def empty_program() -> Iterator[int]:
    """The do-nothing TC program (bpf/bench_empty.bpf.c): the fixed cost of running any program."""
    fd, close = libbpf_loader.load_program(DEFAULT_ASSETS / "bench_empty.bpf.o", "sennet_empty")
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


def in_netns(name: str) -> contextlib.AbstractContextManager[None]:
    """Move the calling thread into a named netns; sockets opened inside stay bound to it."""
    return entered(name)


@dataclass(frozen=True)
class Veth:
    """`rx_ns`/`rx_if` is the receiving (monitored) side, `tx_ns`/`tx_if` the sender's."""

    rx_ns: str
    tx_ns: str
    rx_if: str = "mon0"
    tx_if: str = "gen0"


@contextlib.contextmanager
def veth_pair(mtu: int = 1500) -> Iterator[Veth]:
    """Two fresh namespaces joined by a veth pair, IPv6 off before the devices exist.

    No addresses are configured: nothing but the generator's frames crosses the
    pair (no ARP, no router solicitations), so interface counters are exact.
    """
    tag = uuid.uuid4().hex[:8]
    pair = Veth(rx_ns=f"snbench-{tag}-rx", tx_ns=f"snbench-{tag}-tx")
    created: list[str] = []
    try:
        for ns in (pair.rx_ns, pair.tx_ns):
            run(["ip", "netns", "add", ns])
            created.append(ns)
            for key in ("all", "default"):
                run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        "sysctl",
                        "-qw",
                        f"net.ipv6.conf.{key}.disable_ipv6=1",
                    ]
                )
        run(
            ["ip", "link", "add", f"br{tag}", "mtu", str(mtu), "netns", pair.rx_ns, "type", "veth",
             "peer", "name", f"bt{tag}", "mtu", str(mtu), "netns", pair.tx_ns]
        )  # fmt: skip
        run(["ip", "-n", pair.rx_ns, "link", "set", f"br{tag}", "name", pair.rx_if, "up"])
        run(["ip", "-n", pair.tx_ns, "link", "set", f"bt{tag}", "name", pair.tx_if, "up"])
        yield pair
    finally:
        for ns in created:
            try:
                run(["ip", "netns", "del", ns])
            except UserError as exc:
                note(f"teardown: {exc}")


@contextlib.contextmanager
def pinned_to(cpus: set[int]) -> Iterator[None]:
    """Run the calling thread on `cpus` for a while (Linux affinity is per thread)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus & before or before)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)

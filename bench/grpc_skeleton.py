#!/usr/bin/env python3
"""What grpc.aio alone costs per call for a heartbeat-shaped call, without the control plane.

`bench/controlplane.py` compares real heartbeats with a trivial health call,
which has an empty body and answers at once. A heartbeat differs in two ways
besides our own code: its body is larger, and its handler waits until the
writer thread's group commit answers it. This serves bare grpc.aio handlers
(same process count, same port, same h2load load; no auth, no store) that
either return at once (`echo`) or await a future that a second thread
resolves per batch after a 1 ms sleep standing in for the commit's fsync, one
loop wake-up per batch as `wakeups.py` does (`deferred`), with an empty body
and the benchmark's plain and full heartbeat bodies. The servers' CPU per
call (user + system, all threads) is what grpc.aio costs for that shape; what
a real heartbeat costs beyond it is the control plane's.

    .venv/bin/python bench/grpc_skeleton.py            # table
    .venv/bin/python bench/grpc_skeleton.py --json     # one JSON object per figure
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from controlplane import grpc_frame, heartbeat_body
from grpc_rig import serve_unary, under_load
from sennet.testing.figures import Figure, report

MODES = ("echo", "deferred")
METHOD = "/bench.Skeleton/Call"
AGENT = "6f1c2d3e-0000-4000-8000-000000000001"
COMMIT_S = 0.001  # stands for the group commit's fsync


def serve(port: int, mode: str) -> None:
    """One server process: the handler `mode` names, on the shared port."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiting: queue.Queue[asyncio.Future[bytes]] = queue.Queue()

        def answer(batch: list[asyncio.Future[bytes]]) -> None:
            for fut in batch:
                if not fut.done():  # cancelled when its client went away
                    fut.set_result(b"")

        def writer() -> None:  # the writer thread's shape: drain, "commit", one wake-up
            while True:
                batch = [waiting.get()]
                while True:
                    try:
                        batch.append(waiting.get_nowait())
                    except queue.Empty:
                        break
                time.sleep(COMMIT_S)
                loop.call_soon_threadsafe(answer, batch)

        async def handle(body: bytes, context: Any) -> bytes:
            if mode == "echo":
                return b""
            fut: asyncio.Future[bytes] = loop.create_future()
            waiting.put(fut)
            return await fut

        threading.Thread(target=writer, name="bench-writer", daemon=True).start()
        await serve_unary(port, METHOD, handle)

    asyncio.run(main())


def measure(args: argparse.Namespace, mode: str, body: bytes, workdir: Path) -> Figure:
    load, us = under_load(
        f"{mode}-{len(body)}",
        lambda port: [__file__, "--serve", str(port), mode],
        procs=args.procs,
        path=METHOD,
        bodies=[(body, None)] * args.agents,
        workdir=workdir,
        duration=args.duration,
        streams=args.streams,
    )
    return Figure(
        f"skeleton_{mode}_{len(body) - 5}B_cpu_per_call",
        round(us, 1),
        "us",
        note=f"{load.rps:.0f} calls/s, p99 {load.percentile(0.99):.1f} ms",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    parser.add_argument("--procs", type=int, default=2, help="server processes (SO_REUSEPORT)")
    parser.add_argument("--agents", type=int, default=8, help="h2load clients")
    parser.add_argument("--streams", type=int, default=8, help="concurrent calls per client")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per shape")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        port, mode = args.serve
        if mode not in MODES:
            parser.error(f"--serve: mode {mode!r} is not one of {', '.join(MODES)}")
        serve(int(port), mode)
        return 0
    bodies = (
        grpc_frame(b""),
        heartbeat_body(AGENT),
        heartbeat_body(AGENT, insights=True),
    )
    figs = []
    with tempfile.TemporaryDirectory(prefix="sennet-skeleton-") as tmp:
        for body in bodies:  # the two handlers interleaved per body: the load moves
            for mode in MODES:
                figs.append(measure(args, mode, body, Path(tmp)))
    print(report(figs, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())

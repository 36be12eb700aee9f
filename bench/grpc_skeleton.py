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
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from controlplane import _cpu_s, grpc_frame, h2load, heartbeat_body
from sennet.testing.figures import Figure, report
from sennet.testing.ports import free_port
from sennet.testing.process import PYTHON, LoggedProcess

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
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(handle)
        service, name = METHOD.strip("/").split("/")
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(service, {name: handler})]
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(1)

    asyncio.run(main())


def measure(args: argparse.Namespace, mode: str, body: bytes, workdir: Path) -> Figure:
    port = free_port()
    started: list[LoggedProcess] = []
    try:
        for n in range(args.procs):
            server = LoggedProcess(
                f"{mode}-{n}",
                [PYTHON, __file__, "--serve", str(port), mode],
                workdir / f"{mode}-{len(body)}-{n}.log",  # a log of its own: "ready" is new
            )
            started.append(server.start())
            server.wait_for_log("ready", timeout=20.0)
        pids = [p.proc.pid for p in started if p.proc is not None]
        before = _cpu_s(pids)
        load = h2load(
            port, METHOD, [(body, None)] * args.agents, workdir, args.duration, args.streams
        )
        cpu = _cpu_s(pids) - before
        if not load.completed:
            raise SystemExit(f"{mode}, {len(body)} B bodies: no call completed")
    finally:
        for p in started:
            p.stop(timeout=10)
    return Figure(
        f"skeleton_{mode}_{len(body) - 5}B_cpu_per_call",
        round(cpu / max(1, load.completed) * 1e6, 1),
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

"""The rig `grpc_skeleton.py` and `heartbeat_ladder.py` share: bare grpc.aio servers on one
port, loaded by h2load, priced in server CPU per call.

Both compare handlers that differ in what they do per call, so everything else must be
the same for each: the server (grpc.aio, `SO_REUSEPORT`, the same process count), the
load (`controlplane.h2load`) and the measure (user + system CPU of the server processes,
all threads, over the loaded window).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from controlplane import LoadResult, _cpu_s, h2load
from sennet.testing.ports import free_port
from sennet.testing.process import PYTHON, LoggedProcess

Handler = Callable[[bytes, Any], Awaitable[Any]]


async def serve_unary(
    port: int,
    path: str,
    handle: Handler,
    response_serializer: Callable[[Any], bytes] | None = None,
) -> None:
    """Serve `handle` at the method `path` on the shared port; print "ready"; run until
    SIGTERM. Request bodies reach the handler as bytes, undecoded."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    handler: grpc.RpcMethodHandler[bytes, Any] = grpc.unary_unary_rpc_method_handler(
        handle, response_serializer=response_serializer
    )
    service, name = path.strip("/").split("/")
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(service, {name: handler})]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def under_load(
    name: str,
    serve_args: Callable[[int], list[str]],
    *,
    procs: int,
    path: str,
    bodies: Sequence[tuple[bytes, str | None]],
    workdir: Path,
    duration: float,
    streams: int,
    warmup_s: float = 0.0,
) -> tuple[LoadResult, float]:
    """Start `procs` servers (`PYTHON` + `serve_args(port)`), load them with h2load and give
    (the load's result, server CPU µs per completed call). Raises SystemExit when no call
    completed: a figure from nothing would be a lie."""
    port = free_port()
    started: list[LoggedProcess] = []
    try:
        for n in range(procs):
            server = LoggedProcess(
                f"{name}-{n}",
                [PYTHON, *serve_args(port)],
                workdir / f"{name}-{n}-{port}.log",  # a log of its own: "ready" is new
            )
            started.append(server.start())
            server.wait_for_log("ready", timeout=30.0)
        pids = [p.proc.pid for p in started if p.proc is not None]
        if warmup_s:
            h2load(port, path, bodies, workdir, warmup_s, streams)
        before = _cpu_s(pids)
        load = h2load(port, path, bodies, workdir, duration, streams)
        cpu = _cpu_s(pids) - before
        if not load.completed:
            raise SystemExit(f"{name}: no call completed")
    finally:
        for p in started:
            p.stop(timeout=10)
    return load, cpu / load.completed * 1e6

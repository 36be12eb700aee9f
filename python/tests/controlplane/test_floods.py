"""Floods: idle and slow-header connections on both ports cost no thread each and get closed.

1,000 idle TCP connections and 100 that send part of a request head and stall are
opened against each port (gRPC and HTTP), on loopback. While they are open,
/health answers within a second, the server runs at most 64 threads in under
512 MiB, and the server closes every one of them within the idle timeout (set
short here). A thread per connection (a stdlib ThreadingHTTPServer) fails this.
"""

from __future__ import annotations

import resource
import select
import socket
import time
from pathlib import Path

from sennet.testing.controlplane import ControlPlane, running

IDLE = 1000
SLOW = 100
TIMEOUT_S = 3
MAX_THREADS = 64
MAX_RSS = 512 << 20
SLOW_HEAD = {
    "http": b"POST /sentinel.v1.SentinelService/Heartbeat HTTP/1.1\r\nHost: sennet\r\nContent-",
    "grpc": b"PRI * HTTP/2.0\r\n",  # the first half of the HTTP/2 client preface
}


def _raise_nofile(need: int) -> None:
    """Room for our sockets and, inherited by the server we start, for its end of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    top = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _open(port: int, count: int, first: bytes | None, deadline: float) -> list[socket.socket]:
    socks: list[socket.socket] = []
    for _ in range(count):
        # A server that accepts slowly (a thread per connection, a short backlog) fails here.
        assert time.monotonic() < deadline, f"port {port} accepted {len(socks)} of {count} in time"
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        if first is not None:
            sock.sendall(first)
        socks.append(sock)
    return socks


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset: closed too
        return True


def _wait_all_closed(socks: list[socket.socket], deadline: float) -> list[socket.socket]:
    """Wait until the server has closed every socket or the deadline passes; the open ones."""
    left = {sock.fileno(): sock for sock in socks}
    poller = select.poll()
    for fd in left:
        poller.register(fd, select.POLLIN)
    while left and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            if fd in left and _closed_by_peer(left[fd]):
                poller.unregister(fd)
                del left[fd]
    return list(left.values())


def _health_s(cp: ControlPlane) -> float:
    started = time.monotonic()
    status, _ = cp.get("/health")
    took = time.monotonic() - started
    assert status == 200
    return took


def test_idle_and_slow_header_floods_on_both_ports(tmp_path: Path) -> None:
    _raise_nofile(4 * 2 * (IDLE + SLOW) + 1024)
    with running(tmp_path / "cp.db", tmp_path, ["--idle-timeout", str(TIMEOUT_S)]) as cp:
        assert cp.proc is not None
        pid = cp.proc.pid
        threads_before = int(_status(pid)["Threads"])
        socks: dict[str, list[socket.socket]] = {}
        opened = time.monotonic()
        deadline = opened + TIMEOUT_S
        for name, port in (("grpc", cp.grpc_port), ("http", cp.http_port)):
            idle = _open(port, IDLE, None, deadline)
            socks[name] = idle + _open(port, SLOW, SLOW_HEAD[name], deadline)
        flooded = time.monotonic() - opened
        assert flooded < TIMEOUT_S, "opening the flood took longer than the timeout"
        try:
            health_s = _health_s(cp)
            status = _status(pid)
            threads, rss = int(status["Threads"]), int(status["VmRSS"].split()[0]) << 10
            print(
                f"flood: threads {threads_before} -> {threads}, rss {rss >> 20} MiB, "
                f"/health {health_s * 1000:.0f} ms"
            )
            assert health_s < 1.0
            assert threads <= MAX_THREADS
            assert rss < MAX_RSS
            for name, mine in socks.items():
                left = _wait_all_closed(mine, opened + TIMEOUT_S + 3.0)
                assert not left, f"{name}: {len(left)} of {len(mine)} connections still open"
            assert _health_s(cp) < 1.0
        finally:
            for mine in socks.values():
                for sock in mine:
                    sock.close()
        assert cp.stop() == 0

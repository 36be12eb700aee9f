"""The HTTP port's limits, tried with raw sockets the way a slow or hostile client would.

A request whose head is complete but whose body stalls or trickles is answered
408 and closed within --body-timeout while other clients are served; past
--http-max-connections a request is answered 503 and /health recovers once the
crowd leaves; a chunked body (no Content-Length) past --max-request-bytes is
refused 413 naming the limit. Each test starts its own control plane with the
limit set small, so the figures are measured, not assumed.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sennet.common.retry import retry
from sennet.proto.contract import HEARTBEAT
from sennet.testing.controlplane import ControlPlane, running

BODY_TIMEOUT_S = 2
HEAD = (
    f"POST {HEARTBEAT.path} HTTP/1.1\r\nHost: sennet\r\nContent-Type: application/json\r\n"
    "Authorization: Bearer nobody\r\n"
)


def _connect(cp: ControlPlane) -> socket.socket:
    return socket.create_connection(("127.0.0.1", cp.http_port), timeout=10)


def _read_all(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes: (bytes, seconds it took to close)."""
    started = time.monotonic()
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def _status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def _body(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


@contextlib.contextmanager
def _served(tmp_path: Path, *flags: str) -> Iterator[ControlPlane]:
    """A control plane of this test's own with `flags`, which must stop cleanly afterwards."""
    with running(tmp_path / "cp.db", tmp_path, flags) as cp:
        yield cp
        assert cp.stop() == 0, cp.log()


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickled"])
def test_a_stalled_or_trickled_body_is_answered_408_and_closed_within_the_body_timeout(
    tmp_path: Path, trickle: bool
) -> None:
    with _served(tmp_path, "--body-timeout", str(BODY_TIMEOUT_S), "--idle-timeout", "30") as cp:
        with _connect(cp) as slow:
            slow.sendall((HEAD + "Content-Length: 1000\r\n\r\n{").encode())
            started = time.monotonic()
            if trickle:
                _trickle(slow, until=started + BODY_TIMEOUT_S + 5)
            # Meanwhile the server answers others promptly.
            assert cp.get("/health")[0] == 200
            response, _ = _read_all(slow, BODY_TIMEOUT_S + 10)
            took = time.monotonic() - started
        kind = "trickled" if trickle else "stalled"
        print(f"body timeout {BODY_TIMEOUT_S} s, {kind}: answered and closed after {took:.2f} s")
        assert _status(response) == 408, response
        assert f"body not received within {BODY_TIMEOUT_S} s".encode() in _body(response)
        assert BODY_TIMEOUT_S - 0.5 <= took <= BODY_TIMEOUT_S + 1.5
        assert cp.get("/health")[0] == 200


def _trickle(sock: socket.socket, until: float) -> None:
    """One byte every 0.2 s (always moving, never done in time) until the server answers."""
    sock.settimeout(0.2)
    while time.monotonic() < until:
        try:
            if sock.recv(1, socket.MSG_PEEK):
                return
        except TimeoutError:
            pass
        except OSError:
            return
        try:
            sock.sendall(b" ")
        except OSError:
            return


def test_a_body_sent_in_time_after_a_pause_is_served(tmp_path: Path) -> None:
    with _served(tmp_path, "--body-timeout", str(BODY_TIMEOUT_S)) as cp, _connect(cp) as sock:
        sock.sendall((HEAD + "Content-Length: 2\r\n\r\n{").encode())
        time.sleep(BODY_TIMEOUT_S / 2)
        sock.sendall(b"}")
        sock.settimeout(10)
        response = sock.recv(65536)
    assert _status(response) == 401, response  # a whole request, judged on its token


CAP = 20
HEALTH = b"GET /health HTTP/1.1\r\nHost: sennet\r\nConnection: close\r\n\r\n"


def test_requests_past_the_connection_cap_get_503_and_health_recovers(tmp_path: Path) -> None:
    flags = ("--http-max-connections", str(CAP), "--idle-timeout", "30")
    with _served(tmp_path, *flags) as cp:
        crowd = [_connect(cp) for _ in range(CAP)]
        try:
            retry(lambda last: _health_status(cp) == 503 or None, 10, what="503 past the cap")
        finally:
            for sock in crowd:
                sock.close()
        retry(lambda last: _health_status(cp) == 200 or None, 10, what="/health 200 again")


def _health_status(cp: ControlPlane) -> int:
    with _connect(cp) as probe:
        probe.sendall(HEALTH)
        response, _ = _read_all(probe, 10)
    return _status(response)


LIMIT = 4096


def test_a_chunked_body_past_the_limit_is_refused_413_naming_the_limit(tmp_path: Path) -> None:
    chunk = b"x" * 1024
    with _served(tmp_path, "--max-request-bytes", str(LIMIT)) as cp:
        with _connect(cp) as sock:
            sock.sendall((HEAD + "Transfer-Encoding: chunked\r\n\r\n").encode())
            try:
                for _ in range(2 * LIMIT // len(chunk)):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server may refuse and close before the rest is sent
            response, _ = _read_all(sock, 10)
        assert _status(response) == 413, response
        assert f"exceeds the limit of {LIMIT} bytes".encode() in _body(response)
        assert cp.get("/health")[0] == 200

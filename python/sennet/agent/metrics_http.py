"""The HTTP endpoint of the agent's own /metrics: HTTP/1.0 on the standard library's socketserver.

Behaves as prometheus_client's `start_http_server` did for the agent: any path
but `/favicon.ico` answers GET with the current text (format 0.0.4, gzip when
the client accepts it, as Prometheus does by default), OPTIONS lists the
methods, other methods get 405, requests are not logged, and the address
family (IPv4 or IPv6) follows the listen address. It does not negotiate
OpenMetrics or filter by `name[]`: the text format is what the control plane
serves too, and what every Prometheus reads.

Why not `http.server`: it imports http.client, the email package (to parse
headers), html and mimetypes, about 2.4 MiB of the idle agent's RSS (issue 16,
bench/footprint.py) for an endpoint that reads one request line and one header.
What it needs is here: the request line and the headers are read with a bound
on their length and count and a timeout, anything malformed gets 400, and each
answer closes the connection (HTTP/1.0), so no request body or keep-alive is
ever read.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from io import BufferedIOBase

from sennet.agent.exposition import CONTENT_TYPE

Render = Callable[[], bytes]
MAX_LINE = 8192  # bytes in the request line or one header line (http.server's limit too)
MAX_HEADERS = 100  # header lines (http.server's limit too)
TIMEOUT_S = 10.0  # for the whole request head: a client that sends nothing is dropped
REASONS = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed"}


class BadRequest(Exception):
    """The request head is not one this endpoint reads (the reply is 400)."""


class MetricsServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True  # a slow scraper never holds up shutdown
    block_on_close = False
    allow_reuse_address = True  # a restarted agent binds again at once (as http.server does)

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, body: Render):
        self.address_family = family
        self.body = body
        super().__init__(address, _Handler)

    @property
    def server_port(self) -> int:
        return int(self.server_address[1])


def read_head(rfile: BufferedIOBase) -> tuple[str, str, dict[str, str]]:
    """Method, target and headers (names lower-cased) of one request head from `rfile`."""
    readline = rfile.readline
    line = readline(MAX_LINE + 1)
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise BadRequest("request line too long or cut off")
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"request line {line[:80]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = readline(MAX_LINE + 1)
        if len(line) > MAX_LINE or not line.endswith(b"\n"):
            raise BadRequest("header line too long or cut off")
        if line in (b"\r\n", b"\n"):
            return parts[0], parts[1], headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    raise BadRequest(f"more than {MAX_HEADERS} header lines")


class _Handler(socketserver.StreamRequestHandler):
    server: MetricsServer
    timeout = TIMEOUT_S

    def handle(self) -> None:
        try:
            method, target, headers = read_head(self.rfile)
        except (BadRequest, UnicodeDecodeError):
            self._reply(400, b"", [])
            return
        except OSError:  # timed out or reset: nobody to answer
            return
        if method == "OPTIONS":
            self._reply(200, b"", [("Allow", "OPTIONS,GET")])
        elif method != "GET":
            body = f"# HTTP 405 Method Not Allowed: {method}; use OPTIONS or GET\n".encode()
            self._reply(405, b"" if method == "HEAD" else body, [("Allow", "OPTIONS,GET")])
        elif target.split("?", 1)[0] == "/favicon.ico":  # browsers ask; nothing to show
            self._reply(200, b"", [])
        else:
            body = self.server.body()
            extra = [("Content-Type", CONTENT_TYPE)]
            if gzip_accepted(headers.get("accept-encoding", "")):
                body = gzip.compress(body)
                extra.append(("Content-Encoding", "gzip"))
            self._reply(200, body, extra)

    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        lines = [f"HTTP/1.0 {status} {REASONS[status]}", f"Date: {date}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        with contextlib.suppress(OSError):  # the scraper went away: nobody to tell
            self.wfile.write(head + body)


def gzip_accepted(header: str) -> bool:
    """Whether Accept-Encoding names gzip (parameters ignored, as prometheus_client did)."""
    return any(part.split(";")[0].strip().lower() == "gzip" for part in header.split(","))


def start(listen: str, body: Render) -> tuple[MetricsServer, threading.Thread]:
    """Serve `body()` on `listen` ("HOST:PORT", IPv6 in brackets) from a daemon thread."""
    host, _, port = listen.rpartition(":")
    addr = host.strip("[]") or "0.0.0.0"
    # As bytes: a str host is passed through the idna codec, whose import (unicodedata's
    # tables, stringprep) costs more RSS than this whole server. A listen address is ASCII.
    family, _, _, _, sockaddr = socket.getaddrinfo(
        addr.encode("ascii"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    httpd = MetricsServer((str(sockaddr[0]), int(port)), family, body)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
    thread.start()
    return httpd, thread

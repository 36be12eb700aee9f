"""The HTTP endpoint of the agent's own /metrics: the standard library's threading server.

Behaves as prometheus_client's `start_http_server` did for the agent: any path
but `/favicon.ico` answers GET with the current text (format 0.0.4, gzip when
the client accepts it, as Prometheus does by default), OPTIONS lists the
methods, other methods get 405, requests are not logged, and the address
family (IPv4 or IPv6) follows the listen address. It does not negotiate
OpenMetrics or filter by `name[]`: the text format is what the control plane
serves too, and what every Prometheus reads.
"""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sennet.agent.exposition import CONTENT_TYPE

Render = Callable[[], bytes]


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow scraper never holds up shutdown

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, body: Render):
        self.address_family = family
        self.body = body
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/favicon.ico":  # browsers ask; nothing to show
            self._reply(200, b"", [])
            return
        body = self.server.body()
        headers = [("Content-Type", CONTENT_TYPE)]
        if _gzip_accepted(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        self._reply(200, body, headers)

    def do_OPTIONS(self) -> None:
        self._reply(200, b"", [("Allow", "OPTIONS,GET")])

    def _refuse(self) -> None:
        body = f"# HTTP 405 Method Not Allowed: {self.command}; use OPTIONS or GET\n".encode()
        self._reply(405, body, [("Allow", "OPTIONS,GET")])

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _refuse

    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not logged: every 15 s for ever would drown the agent's own lines."""


def _gzip_accepted(header: str) -> bool:
    """Whether Accept-Encoding names gzip (parameters ignored, as prometheus_client did)."""
    return any(part.split(";")[0].strip().lower() == "gzip" for part in header.split(","))


def start(listen: str, body: Render) -> tuple[MetricsServer, threading.Thread]:
    """Serve `body()` on `listen` ("HOST:PORT", IPv6 in brackets) from a daemon thread."""
    host, _, port = listen.rpartition(":")
    addr = host.strip("[]") or "0.0.0.0"
    family, _, _, _, sockaddr = socket.getaddrinfo(
        addr, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    httpd = MetricsServer((str(sockaddr[0]), int(port)), family, body)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
    thread.start()
    return httpd, thread

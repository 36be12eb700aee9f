"""The HTTP port: GET /health, GET /metrics, and Connect unary calls to SentinelService.

Connect's unary form is a plain POST of the message (proto3 JSON with
`application/json`, or binary with `application/proto`) to
`/sentinel.v1.SentinelService/<Method>`; errors are JSON `{"code", "message"}`
with an HTTP status per code. That makes `curl` a working client. A refusal for
load (RESOURCE_EXHAUSTED, HTTP 429) also carries `Retry-After` in whole seconds
and, in the JSON body, `retry_after_ms`. This module
only translates HTTP to and from `calls.py`, which authenticates, decodes, runs
and records every call for gRPC too, so the two transports cannot disagree.

A stdlib `ThreadingHTTPServer` is enough: scrapes and Connect calls are few
next to gRPC heartbeats, and it keeps the dependency list short.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sennet.common.errors import UserError
from sennet.common.log import event
from sennet.controlplane import codec
from sennet.controlplane.calls import Calls, Encoding
from sennet.controlplane.metrics import CONTENT_TYPE, Exposition, Transport
from sennet.controlplane.refusals import RequestError, invalid
from sennet.proto.contract import METHODS, Method

log = logging.getLogger("sennet.controlplane.http")
DRAIN_LIMIT = 64 << 20  # oversized bodies up to this size are read and dropped before the 400


class HttpApp:
    """Request handling, separate from the socket plumbing so it stays testable and typed."""

    def __init__(
        self,
        calls: Calls,
        exposition: Exposition,
        health: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        self.calls = calls
        self.exposition = exposition
        self.health = health
        self.max_request_bytes = calls.max_request_bytes

    def connect_call(
        self,
        method: Method[Any, Any],
        content_type: str,
        authorization: str | None,
        body: bytes,
    ) -> tuple[int, str, bytes, dict[str, str]]:
        """(status, content type, body, extra headers) for one Connect unary call."""
        as_json = content_type == "application/json"
        encoding = Encoding.JSON if as_json else Encoding.PROTO
        try:
            resp = self.calls.call_blocking(
                method, Transport.CONNECT, authorization, body, encoding
            )
        except RequestError as err:
            return err.code.http, "application/json", _error_body(err), _error_headers(err)
        if as_json:
            return 200, "application/json", codec.to_json(resp), {}
        return 200, "application/proto", resp.SerializeToString(), {}


def _error_body(err: RequestError) -> bytes:
    doc: dict[str, object] = {"code": err.code.connect, "message": err.message}
    if err.retry_after_s is not None:
        doc["retry_after_ms"] = round(err.retry_after_s * 1000)
    return json.dumps(doc).encode()


def _error_headers(err: RequestError) -> dict[str, str]:
    if err.retry_after_s is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(err.retry_after_s)))}


def _handler_class(app: HttpApp) -> type[BaseHTTPRequestHandler]:
    by_path = {m.path: m for m in METHODS}

    class Handler(BaseHTTPRequestHandler):
        server_version = "sennet-controlplane"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None  # requests are counted in metrics; no per-request log lines

        def _reply(
            self,
            status: int,
            content_type: str,
            body: bytes,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: object) -> None:
            self._reply(
                status, "application/json", json.dumps(obj, sort_keys=True).encode() + b"\n"
            )

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/health":
                ok, report = app.health()
                self._json(200 if ok else 503, report)
            elif path == "/metrics":
                self._reply(200, CONTENT_TYPE, app.exposition.render())
            else:
                self._json(404, {"error": f"no such path {path}; try /health or /metrics"})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            method = by_path.get(path)
            if method is None:
                self._json(404, {"code": "unimplemented", "message": f"no such method {path}"})
                return
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type not in ("application/json", "application/proto"):
                self.close_connection = True
                self._json(
                    415,
                    {
                        "code": "invalid_argument",
                        "message": f"content-type: {content_type or 'missing'}; "
                        "use application/json or application/proto",
                    },
                )
                return
            length_text = self.headers.get("Content-Length")
            try:
                length = int(length_text or "")
                if length < 0:
                    raise ValueError
            except ValueError:
                err = invalid("content-length", f"{length_text!r} is not a byte count")
                self.close_connection = True
                self._reply(err.code.http, "application/json", _error_body(err))
                return
            if length > app.max_request_bytes:
                err = invalid(
                    "request",
                    f"message of {length} bytes exceeds the limit of {app.max_request_bytes} bytes",
                )
                app.calls.refused(method, err)
                if length <= DRAIN_LIMIT:
                    # Read and drop the body: a reply while the client is still sending makes
                    # it fail with a broken pipe instead of seeing our 400.
                    left = length
                    while left > 0:
                        chunk = self.rfile.read(min(left, 1 << 16))
                        if not chunk:
                            break
                        left -= len(chunk)
                else:
                    self.close_connection = True  # the unread body must not become a request
                self._reply(err.code.http, "application/json", _error_body(err))
                return
            body = self.rfile.read(length)
            status, ctype, out, headers = app.connect_call(
                method, content_type, self.headers.get("Authorization"), body
            )
            self._reply(status, ctype, out, headers)

    return Handler


class HttpServer:
    """Serves `HttpApp` on a background thread."""

    def __init__(self, listen: str, app: HttpApp) -> None:
        host, _, port = listen.rpartition(":")
        try:
            self._httpd = ThreadingHTTPServer(
                (host.strip("[]") or "0.0.0.0", int(port)), _handler_class(app)
            )
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot listen for HTTP on {listen}: {exc}") from exc
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="sennet-http", daemon=True
        )

    def start(self) -> int:
        self._thread.start()
        event(log, "http_listening", port=self.port)
        return self.port

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

"""The HTTP port: GET /health, GET /metrics, and Connect (JSON, proto, gRPC-Web) to SentinelService.

Connect is served by the official `connectrpc` ASGI application generated from
the .proto (`sentinel_connect.py`), under uvicorn. The generated application
decodes nothing itself here: its codecs hand the raw body on (`_Raw`), and the
handlers call `Calls.call`, the one dispatcher gRPC uses too, which
authenticates before it decodes and counts and times every call. A refusal
becomes a `ConnectError` (JSON `{"code", "message"}` with the Connect HTTP
status); one for load (RESOURCE_EXHAUSTED, 429) also carries `Retry-After`.

Around the Connect application, plain ASGI routes answer /health and /metrics
(no authentication, off the event loop). A body larger than `max_request_bytes`
is refused 413 from its Content-Length before any of it is read; a chunked one
(no Content-Length) is read up to that size and refused 413 the moment it passes
it, never handed on cut short. The whole body must arrive within `body_timeout_s`
of the head: a client that stalls or trickles it is answered 408 and its
connection closed, so a slow body holds a connection for a bounded time (the
head timeout below stops covering a connection once its head is complete).
Either refusal closes the connection, since the rest of the body would otherwise
be read as the next request. uvicorn enforces the
connection cap and the largest incomplete request head; its keep-alive timeout
covers only the wait after a response, so `_HeadTimeoutH11` also closes a
connection whose request head is not complete within that time of it opening (or
of the previous response): idle and slow-header connections cannot pile up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import uvicorn
from connectrpc.code import Code as ConnectCode
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf.message import Message
from uvicorn.protocols.http.h11_impl import H11Protocol

from sennet.common.errors import UserError
from sennet.common.log import event
from sennet.controlplane import codec
from sennet.controlplane.calls import Calls, Encoding
from sennet.controlplane.grpc_server import TlsFiles
from sennet.controlplane.metrics import CONTENT_TYPE, Exposition, Transport
from sennet.controlplane.refusals import Code, RequestError, invalid
from sennet.proto.contract import HEARTBEAT, METHODS, REGISTER, Method
from sennet.proto.sentinel.v1.sentinel_connect import SentinelServiceASGIApplication

log = logging.getLogger("sennet.controlplane.http")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
MAX_HEAD_BYTES = 16 << 10  # request line and headers; a larger head is refused by uvicorn


class _Raw:
    """A request body as it arrived, and how it is encoded: `Calls.call` decodes it."""

    __slots__ = ("body", "encoding")

    def __init__(self, body: bytes, encoding: Encoding) -> None:
        self.body = body
        self.encoding = encoding


class _RawCodec:
    """A connectrpc codec that passes the body through and encodes our responses."""

    def __init__(self, encoding: Encoding) -> None:
        self._encoding = encoding

    def name(self) -> str:
        return self._encoding.value

    def encode(self, message: Message) -> bytes:
        if self._encoding is Encoding.JSON:
            return codec.to_json(message)
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> _Raw:
        return _Raw(bytes(data), self._encoding)


class _Service:
    """SentinelService for the generated Connect application: every call goes to `Calls.call`."""

    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    async def register(self, request: Any, ctx: RequestContext[Any, Any], /) -> Any:
        return await self._call(REGISTER, request, ctx)

    async def heartbeat(self, request: Any, ctx: RequestContext[Any, Any], /) -> Any:
        return await self._call(HEARTBEAT, request, ctx)

    async def _call(
        self, method: Method[Any, Any], request: Any, ctx: RequestContext[Any, Any]
    ) -> Message:
        raw = cast(_Raw, request)
        authorization = ctx.request_headers.get("authorization")
        try:
            return await self._calls.call(
                method, Transport.CONNECT, authorization, raw.body, raw.encoding
            )
        except RequestError as err:
            if err.retry_after_s is not None:
                ctx.response_headers["retry-after"] = str(max(1, math.ceil(err.retry_after_s)))
            raise ConnectError(ConnectCode(err.code.connect), err.message) from None


class HttpApp:
    """The ASGI application: /health and /metrics, then Connect with body limits."""

    def __init__(
        self,
        calls: Calls,
        exposition: Exposition,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        body_timeout_s: float = 10.0,
    ) -> None:
        self.calls = calls
        self.exposition = exposition
        self.health = health
        self.max_request_bytes = calls.max_request_bytes
        self.body_timeout_s = body_timeout_s
        self._by_path = {m.path: m for m in METHODS}
        self._connect = SentinelServiceASGIApplication(
            cast(Any, _Service(calls)),
            read_max_bytes=self.max_request_bytes,
            codecs=[_RawCodec(Encoding.PROTO), _RawCodec(Encoding.JSON)],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        path = scope["path"]
        if scope["method"] == "GET" and path == "/health":
            ok, report = await asyncio.to_thread(self.health)
            await _reply(send, 200 if ok else 503, "application/json", _json(report))
            return
        if scope["method"] == "GET" and path == "/metrics":
            body = await asyncio.to_thread(self.exposition.render)
            await _reply(send, 200, CONTENT_TYPE, body)
            return
        method = self._by_path.get(path)
        if method is None:
            await _reply(
                send,
                404,
                "application/json",
                _json({"code": "unimplemented", "message": f"no such path {path}"}),
            )
            return
        length = _content_length(scope)
        if length is not None and length > self.max_request_bytes:
            # the body is never read; Connection: close keeps it from becoming a request
            await self._refuse(send, method, self._too_large(length, ""))
            return
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await _read_body(receive, self.max_request_bytes)
        except TimeoutError:
            err = RequestError(
                Code.DEADLINE_EXCEEDED,
                f"request: body not received within {self.body_timeout_s:g} s (body_timeout)",
                reason="body_timeout",
            )
            await self._refuse(send, method, err, status=408)
            return
        except _TooLarge as exc:
            await self._refuse(send, method, self._too_large(exc.seen, "at least "))
            return
        except _Gone:
            return  # the client left; there is nobody to answer
        await self._connect(cast(Any, scope), cast(Any, _replay(body, receive)), cast(Any, send))

    def _too_large(self, size: int, qualifier: str) -> RequestError:
        limit = self.max_request_bytes
        return invalid(
            "request", f"message of {qualifier}{size} bytes exceeds the limit of {limit} bytes"
        )

    async def _refuse(
        self, send: Send, method: Method[Any, Any], err: RequestError, status: int = 413
    ) -> None:
        """Count the refusal, answer it as Connect JSON with `status`, and close the connection."""
        self.calls.refused(method, err)
        doc = {"code": err.code.connect, "message": err.message}
        await _reply(send, status, "application/json", _json(doc), close=True)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _TooLarge(Exception):
    """A body passed the limit while it was read; `seen` is how much had arrived by then."""

    def __init__(self, seen: int) -> None:
        super().__init__(seen)
        self.seen = seen


class _Gone(Exception):
    """The client disconnected before its body was complete."""


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, or `_TooLarge` as soon as more than `limit` bytes arrived."""
    parts: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _Gone()
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge(seen)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the Connect application: the body already read, then the real channel."""
    given = False

    async def inner() -> MutableMapping[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return inner


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True).encode() + b"\n"


async def _reply(
    send: Send, status: int, content_type: str, body: bytes, close: bool = False
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (`timeout_keep_alive`)."""

    _head_timer: asyncio.TimerHandle | None = None
    _cycle_at_arm: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(cast(asyncio.Transport, transport))
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not self._cycle_at_arm:  # a whole head arrived: a request runs
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._cycle_at_arm = self.cycle
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        running = self.cycle is not self._cycle_at_arm and self.cycle is not None
        if running and self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined request started without new data; it is not idle
        if not self.transport.is_closing():
            self.transport.close()


class HttpServer:
    """Serves `HttpApp` with uvicorn on the control plane's event loop."""

    def __init__(
        self,
        listen: str,
        app: HttpApp,
        *,
        tls: TlsFiles | None = None,
        idle_timeout_s: int = 5,
        max_connections: int = 4096,
    ) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._sock = socket.create_server((host, int(port)), family=family, backlog=2048)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot listen for HTTP on {listen}: {exc}") from exc
        self.port = int(self._sock.getsockname()[1])
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            http=_HeadTimeoutH11,
            loop="none",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=idle_timeout_s,
            limit_concurrency=max_connections,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
        )
        self._server = uvicorn.Server(self._config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        self._task = asyncio.create_task(self._server._serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise UserError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        event(log, "http_listening", port=self.port, tls=self._config.is_ssl)
        return self.port

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._sock.close()

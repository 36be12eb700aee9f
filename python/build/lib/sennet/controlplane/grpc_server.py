"""The gRPC transport: SentinelService on grpc.aio, the standard health service, TLS.

Each handler only translates (body bytes and the `authorization` metadata in,
a gRPC status out); `calls.py` authenticates, decodes, runs and records. Handlers
are registered without a request deserializer so that `codec.from_proto`
decodes the raw bytes, and a bad body is INVALID_ARGUMENT with a reason rather
than grpcio's generic INTERNAL. grpcio's own receive limit is set above ours,
so our limit answers first with a clear message; only absurdly large frames
hit grpcio's RESOURCE_EXHAUSTED.

Calls in progress are capped (`max_concurrent_calls`) here rather than with
grpc.aio's `maximum_concurrent_rpcs`: grpcio refuses those in C before any of
our code runs, so they could not be counted in /metrics nor carry a retry
hint. Past the cap a call is RESOURCE_EXHAUSTED (reason `too_many_calls`).
Every RESOURCE_EXHAUSTED carries the trailing metadata `grpc-retry-pushback-ms`
(gRFC A6, which gRPC clients with a retry policy obey): wait that long, then
send the same request again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sennet.common.errors import UserError
from sennet.controlplane.calls import Calls
from sennet.controlplane.metrics import Transport
from sennet.controlplane.refusals import RequestError, overloaded
from sennet.proto.contract import METHODS, SERVICE, Method

RETRY_PUSHBACK = "grpc-retry-pushback-ms"
CALLS_RETRY_AFTER_S = 0.5  # calls in progress finish in milliseconds unless the store stalls


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate signed by it

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: Path, what: str) -> bytes:
            try:
                return path.read_bytes()
            except OSError as exc:
                raise UserError(f"cannot read TLS {what} {path}: {exc.strerror}") from exc

        ca = read(self.client_ca, "client CA") if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(read(self.key, "key"), read(self.cert, "certificate"))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


def metadata_value(metadata: Any, key: str) -> str | None:
    """First value of `key` in gRPC invocation metadata (keys arrive lower-case)."""
    for item in metadata or ():
        if item[0] == key:
            value = item[1]
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _serialize(msg: Any) -> bytes:
    return bytes(msg.SerializeToString())


class _InFlight:
    """Calls in progress on this server's event loop (one loop: a plain count is safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.now = 0


def _handler(
    calls: Calls, method: Method[Any, Any], in_flight: _InFlight
) -> grpc.RpcMethodHandler[bytes, Any]:
    """A unary handler that only translates: bytes and metadata in, status out."""

    async def handle(body: bytes, context: aio.ServicerContext[Any, Any]) -> Any:
        authorization = metadata_value(context.invocation_metadata(), "authorization")
        try:
            if in_flight.now >= in_flight.limit:
                err = overloaded(
                    "calls in progress",
                    in_flight.limit,
                    "max_concurrent_calls",
                    "too_many_calls",
                    CALLS_RETRY_AFTER_S,
                )
                calls.refused(method, err)
                raise err
            in_flight.now += 1
            try:
                return await calls.call(method, Transport.GRPC, authorization, body)
            finally:
                in_flight.now -= 1
        except RequestError as err:
            trailing: tuple[tuple[str, str], ...] = ()
            if err.retry_after_s is not None:
                trailing = ((RETRY_PUSHBACK, str(round(err.retry_after_s * 1000))),)
            await context.abort(err.code.grpc, err.message, trailing_metadata=trailing)
            raise  # unreachable: abort raises

    return grpc.unary_unary_rpc_method_handler(handle, response_serializer=_serialize)


class GrpcServer:
    """grpc.aio server bound to one address; `port` is known after `start()`."""

    def __init__(
        self,
        listen: str,
        calls: Calls,
        *,
        tls: TlsFiles | None = None,
        reuse_port: bool = False,
        max_concurrent_calls: int = 1024,
        handshake_timeout_s: float = 5.0,
    ) -> None:
        self._listen = listen
        self._tls = tls
        self._server = aio.server(
            options=[
                ("grpc.max_receive_message_length", 4 * calls.max_request_bytes),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                # a connection that never completes TLS and the HTTP/2 preface is closed
                ("grpc.server_handshake_timeout_ms", round(handshake_timeout_s * 1000)),
            ],
        )
        in_flight = _InFlight(max_concurrent_calls)
        self._server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE, {m.name: _handler(calls, m, in_flight) for m in METHODS}
                )
            ]
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.port = 0

    async def start(self) -> int:
        try:
            if self._tls is not None:
                self.port = self._server.add_secure_port(self._listen, self._tls.credentials())
            else:
                self.port = self._server.add_insecure_port(self._listen)
        except RuntimeError as exc:
            raise UserError(f"cannot listen for gRPC on {self._listen}: {exc}") from exc
        if self.port == 0:
            raise UserError(f"cannot listen for gRPC on {self._listen}", hint="is the port in use?")
        await self._server.start()
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def set_serving(self, ok: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace_s)

"""The gRPC side: SentinelService handlers on grpc.aio, the standard health service, TLS.

Handlers are registered without a request deserializer: the auth interceptor
passes the raw bytes on and `codec.from_proto` decodes them, so a bad body is
INVALID_ARGUMENT with a reason rather than grpcio's generic INTERNAL. grpcio's
own receive limit is set above ours, so our limit answers first with a clear
message; only absurdly large frames hit grpcio's RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sennet.common.errors import UserError
from sennet.controlplane import codec
from sennet.controlplane.auth import SERVICE, Authenticated, Authenticator, AuthInterceptor
from sennet.controlplane.metrics import ServerMetrics
from sennet.controlplane.refusals import RequestError
from sennet.controlplane.sentinel_service import SentinelService
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb


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


class _Handlers:
    def __init__(self, service: SentinelService, metrics: ServerMetrics, max_bytes: int) -> None:
        self._service = service
        self._metrics = metrics
        self._max = max_bytes

    async def _fail(
        self, method: str, err: RequestError, context: aio.ServicerContext[Any, Any]
    ) -> None:
        self._metrics.reject(method, err)
        await context.abort(err.code.grpc, err.message)

    async def register(
        self, call: Authenticated, context: aio.ServicerContext[Any, Any]
    ) -> pb.RegisterResponse:
        started = time.perf_counter()
        try:
            req = codec.from_proto(pb.RegisterRequest, call.payload, self._max)
            resp = await asyncio.to_thread(self._service.register, call.principal, req)
        except RequestError as err:
            await self._fail("Register", err, context)
            raise  # unreachable: abort raises
        finally:
            self._metrics.latency.labels("Register", "grpc").observe(time.perf_counter() - started)
        self._metrics.registrations.labels("grpc").inc()
        return resp

    async def heartbeat(
        self, call: Authenticated, context: aio.ServicerContext[Any, Any]
    ) -> pb.HeartbeatResponse:
        started = time.perf_counter()
        try:
            req = codec.from_proto(pb.HeartbeatRequest, call.payload, self._max)
            resp = await asyncio.wrap_future(self._service.heartbeat(call.principal, req))
        except RequestError as err:
            await self._fail("Heartbeat", err, context)
            raise
        finally:
            self._metrics.latency.labels("Heartbeat", "grpc").observe(time.perf_counter() - started)
        self._metrics.accepted.labels("grpc").inc()
        return resp


def _serialize(msg: Any) -> bytes:
    return bytes(msg.SerializeToString())


class GrpcServer:
    """grpc.aio server bound to one address; `port` is known after `start()`."""

    def __init__(
        self,
        listen: str,
        service: SentinelService,
        authenticator: Authenticator,
        metrics: ServerMetrics,
        *,
        max_request_bytes: int,
        tls: TlsFiles | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._listen = listen
        self._tls = tls
        handlers = _Handlers(service, metrics, max_request_bytes)
        self._server = aio.server(
            interceptors=[AuthInterceptor(authenticator, metrics)],
            options=[
                ("grpc.max_receive_message_length", 4 * max_request_bytes),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ],
        )
        self._server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "Register": grpc.unary_unary_rpc_method_handler(
                            handlers.register, response_serializer=_serialize
                        ),
                        "Heartbeat": grpc.unary_unary_rpc_method_handler(
                            handlers.heartbeat, response_serializer=_serialize
                        ),
                    },
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

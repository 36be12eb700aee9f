"""The one path every SentinelService call takes, whatever transport carried it.

authenticate -> decode -> run the service method -> count acceptance or the
refusal by reason -> observe latency. gRPC and Connect only translate: bytes
and the `authorization` header in, a response message or a `RequestError` out,
which each maps to its own status. Recording here, once, means a transport
cannot forget to count or time a call, and both transports (grpc.aio and the
connectrpc ASGI app) count the same refusal the same way. Both await `call` on
the one event loop.
"""

from __future__ import annotations

import asyncio
import enum
import time
from typing import Any

from google.protobuf.message import Message
from prometheus_client import Counter, Histogram

from sennet.controlplane import codec, old_path
from sennet.controlplane.auth import Authenticator, Principal
from sennet.controlplane.metrics import ServerMetrics, Transport
from sennet.controlplane.refusals import RequestError
from sennet.controlplane.sentinel_service import SentinelService
from sennet.controlplane.wakeups import Wakeups
from sennet.proto.contract import BY_NAME, HEARTBEAT, REGISTER, Method
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb


class Encoding(enum.StrEnum):
    """How a request body is encoded: binary protobuf or proto3 JSON (Connect's two forms)."""

    PROTO = "proto"
    JSON = "json"


class Calls:
    """Dispatches authenticated, decoded calls to `SentinelService` and records each one."""

    def __init__(
        self,
        service: SentinelService,
        authenticator: Authenticator,
        metrics: ServerMetrics,
        max_request_bytes: int,
    ) -> None:
        self._service = service
        self._auth = authenticator
        self._metrics = metrics
        self._max = max_request_bytes
        # one loop wake-up per committed group, not per heartbeat (wakeups.py)
        self._wakeups = None if old_path.selected() else Wakeups()
        # What "accepted" means per method: an enrolment, or a stored heartbeat.
        self._accepted: dict[str, Counter] = {
            REGISTER.name: metrics.registrations,
            HEARTBEAT.name: metrics.accepted,
        }
        if set(self._accepted) != set(BY_NAME):
            raise TypeError("calls.py does not route every method of the contract")
        # each call's two labelled series, looked up once: `labels()` takes a lock and
        # builds the label tuple, twice per call otherwise
        self._series: dict[tuple[str, Transport], tuple[Counter, Histogram]] = {
            (name, transport): (
                counter.labels(transport),
                metrics.latency.labels(name, transport),
            )
            for name, counter in self._accepted.items()
            for transport in Transport
        }

    @property
    def max_request_bytes(self) -> int:
        return self._max

    async def call(
        self,
        method: Method[Any, Any],
        transport: Transport,
        authorization: str | None,
        body: bytes,
        encoding: Encoding = Encoding.PROTO,
    ) -> Message:
        """Answer one call; raises `RequestError` (already counted) when it is refused."""
        # counted and timed inline: a @contextmanager's generator costs 2-3 us per call
        accepted, latency = self._series[method.name, transport]
        started = time.perf_counter()
        try:
            principal, req = self._admit(method, authorization, body, encoding)
            if isinstance(req, REGISTER.request):
                # one committed transaction: blocking, so off the event loop
                answer: Message = await asyncio.to_thread(self._service.register, principal, req)
            elif self._wakeups is None:
                stored = self._service.heartbeat(principal, _heartbeat(req))
                acknowledged = await asyncio.wrap_future(stored)
                answer = acknowledged
            else:
                reply = self._wakeups.reply()
                reply.offer = self._service.queue_heartbeat(principal, _heartbeat(req), reply)
                answer = await reply.waiter
        except RequestError as err:
            self._metrics.reject(method.name, err)
            raise
        else:
            accepted.inc()
            return answer
        finally:
            latency.observe(time.perf_counter() - started)

    def refused(self, method: Method[Any, Any], err: RequestError) -> None:
        """Count a refusal a transport decided before it had a body (e.g. Content-Length)."""
        self._metrics.reject(method.name, err)

    def _admit(
        self,
        method: Method[Any, Any],
        authorization: str | None,
        body: bytes,
        encoding: Encoding,
    ) -> tuple[Principal, Message]:
        principal = self._auth.authenticate(method, authorization)
        decode = codec.from_json if encoding is Encoding.JSON else codec.from_proto
        req: Message = decode(method.request, body, self._max)
        return principal, req


def _heartbeat(req: Message) -> pb.HeartbeatRequest:
    if not isinstance(req, HEARTBEAT.request):
        raise TypeError(f"no route for {req.DESCRIPTOR.full_name}")
    return req

"""Authentication: bearer token to principal, and the gRPC server interceptor that applies it.

Register needs a bootstrap token; Heartbeat needs the agent's own token. The
interceptor authenticates before the handler runs and hands the handler an
`Authenticated` (principal + raw request bytes), so no handler can forget the
check and the handler still decides what the principal may do (an agent
token may only report for its own agent id, checked in `sentinel_service.py`). The
Connect endpoint calls the same `Authenticator`.

Errors: a missing, malformed, unknown or revoked token is UNAUTHENTICATED;
a valid token of the wrong kind, or another agent's, is PERMISSION_DENIED.
Every refusal is counted by reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from sennet.controlplane import tokens
from sennet.controlplane.metrics import ServerMetrics
from sennet.controlplane.refusals import Code, RequestError
from sennet.controlplane.store import Store, TokenRow

SERVICE = "sentinel.v1.SentinelService"
_ARTICLE = {tokens.TokenKind.BOOTSTRAP: "a", tokens.TokenKind.AGENT: "an"}
REQUIRED_KIND = {"Register": tokens.TokenKind.BOOTSTRAP, "Heartbeat": tokens.TokenKind.AGENT}


@dataclass(frozen=True)
class Principal:
    kind: tokens.TokenKind
    token_id: str
    agent_id: str | None  # set for agent tokens


@dataclass(frozen=True)
class Authenticated:
    """What an intercepted handler receives instead of the bare request."""

    principal: Principal
    payload: bytes


class Authenticator:
    """Checks bearer tokens against the store.

    Active agent-token rows are cached for `cache_s` seconds, because a
    database read per heartbeat on the event loop contends with the writer.
    The cost: a token revoked from the command line (another process) stops
    working within `cache_s`; enrolment in this process clears the cache at
    once. Bootstrap tokens are never cached (enrolment is rare).
    """

    def __init__(self, store: Store, cache_s: float = 1.0) -> None:
        self._store = store
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, TokenRow]] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Drop cached rows (an agent re-enrolled: its previous token was just revoked)."""
        with self._lock:
            self._cache.clear()

    def _lookup(self, token_id: str) -> TokenRow | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(token_id)
        if hit is not None and now - hit[0] < self._cache_s:
            return hit[1]
        row = self._store.lookup_token(token_id)
        if row is not None and row.kind == tokens.TokenKind.AGENT and row.revoked_at is None:
            with self._lock:
                if len(self._cache) > 100_000:  # bounded: forged ids never enter it anyway
                    self._cache.clear()
                self._cache[token_id] = (now, row)
        return row

    def authenticate(self, method: str, authorization: str | None) -> Principal:
        """The principal behind `authorization` for `method`, or a RequestError saying why not."""
        want = REQUIRED_KIND[method]
        text = tokens.bearer(authorization)
        if text is None:
            raise RequestError(
                Code.UNAUTHENTICATED,
                "authorization: missing; send 'authorization: Bearer <token>'",
                "missing_token",
            )
        parsed = tokens.parse(text)
        if parsed is None:
            raise RequestError(
                Code.UNAUTHENTICATED, "authorization: not a Sennet token", "malformed_token"
            )
        row = self._lookup(parsed.token_id)
        if row is None or not tokens.matches(text, row.digest):
            raise RequestError(
                Code.UNAUTHENTICATED, "authorization: token is not valid", "unknown_token"
            )
        if row.revoked_at is not None:
            raise RequestError(
                Code.UNAUTHENTICATED,
                f"authorization: token {row.token_id} was revoked",
                "revoked_token",
            )
        if row.kind != want:
            raise RequestError(
                Code.PERMISSION_DENIED,
                f"authorization: {method} needs {_ARTICLE[want]} {want} token, "
                f"not {_ARTICLE[row.kind]} {row.kind} token",
                "wrong_token_kind",
            )
        return Principal(row.kind, row.token_id, row.agent_id)


def metadata_value(metadata: Any, key: str) -> str | None:
    """First value of `key` in gRPC invocation metadata (keys arrive lower-case)."""
    for item in metadata or ():
        if item[0] == key:
            value = item[1]
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


class AuthInterceptor(aio.ServerInterceptor):
    """Wraps every SentinelService handler with token authentication."""

    def __init__(self, authenticator: Authenticator, metrics: ServerMetrics) -> None:
        self._auth = authenticator
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if handler is None or service != SERVICE or method not in REQUIRED_KIND:
            return handler
        inner: Any = handler.unary_unary
        authorization = metadata_value(handler_call_details.invocation_metadata, "authorization")

        async def authenticated(request: bytes, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            try:
                principal = self._auth.authenticate(method, authorization)
            except RequestError as err:
                self._metrics.reject(method, err)
                self._metrics.latency.labels(method, "grpc").observe(time.perf_counter() - started)
                await context.abort(err.code.grpc, err.message)
            return await inner(Authenticated(principal, request), context)

        return grpc.unary_unary_rpc_method_handler(
            authenticated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

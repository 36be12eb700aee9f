"""One error type for rejected requests, mapped once to gRPC, Connect and HTTP.

Handlers raise `RequestError(Code.X, "field: what is wrong", reason="...")`;
each transport turns it into its own status. `reason` is a short, fixed label
for the rejection counter (never free text, so the metric's cardinality stays
bounded); `message` names the offending field for the person reading it.
"""

from __future__ import annotations

import enum

import grpc


class Code(enum.Enum):
    """Status codes the control plane returns: (gRPC code, Connect code, HTTP status)."""

    INVALID_ARGUMENT = (grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument", 400)
    UNAUTHENTICATED = (grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", 401)
    PERMISSION_DENIED = (grpc.StatusCode.PERMISSION_DENIED, "permission_denied", 403)
    RESOURCE_EXHAUSTED = (grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted", 429)
    NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "not_found", 404)
    UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "unavailable", 503)
    INTERNAL = (grpc.StatusCode.INTERNAL, "internal", 500)
    # A request body that did not arrive in time (HTTP only): 408 tells the client it was slow.
    DEADLINE_EXCEEDED = (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded", 408)

    @property
    def grpc(self) -> grpc.StatusCode:
        return self.value[0]

    @property
    def connect(self) -> str:
        return str(self.value[1])

    @property
    def http(self) -> int:
        return int(self.value[2])


class RequestError(Exception):
    """A request the control plane refuses; carries its status, message and counter reason.

    `retry_after_s` is set when the refusal is about load, not about the request
    (RESOURCE_EXHAUSTED): the same request will succeed later, and the transports
    tell the caller how long to wait (gRPC trailing metadata
    `grpc-retry-pushback-ms`, HTTP `Retry-After`).
    """

    def __init__(
        self, code: Code, message: str, reason: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.retry_after_s = retry_after_s


def invalid(field: str, problem: str, reason: str = "invalid_argument") -> RequestError:
    """INVALID_ARGUMENT whose message starts with the field path, e.g. `interfaces[1].name: ...`."""
    return RequestError(Code.INVALID_ARGUMENT, f"{field}: {problem}", reason=reason)


def overloaded(
    what: str, limit: int, setting: str, reason: str, retry_after_s: float
) -> RequestError:
    """RESOURCE_EXHAUSTED naming the limit and the setting that raises it, with a retry hint."""
    return RequestError(
        Code.RESOURCE_EXHAUSTED,
        f"{what}: at the limit of {limit} ({setting}); retry after {retry_after_s:g} s",
        reason=reason,
        retry_after_s=retry_after_s,
    )

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
    NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "not_found", 404)
    UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, "unavailable", 503)
    INTERNAL = (grpc.StatusCode.INTERNAL, "internal", 500)

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
    """A request the control plane refuses; carries its status, message and counter reason."""

    def __init__(self, code: Code, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


def invalid(field: str, problem: str) -> RequestError:
    """INVALID_ARGUMENT whose message starts with the field path, e.g. `interfaces[1].name: ...`."""
    return RequestError(Code.INVALID_ARGUMENT, f"{field}: {problem}", reason="invalid_argument")

"""The one RPC contract: service and method names read from the compiled proto.

The agent's sink, the control plane's gRPC and Connect transports, the tests
and the benchmarks take names, paths and message classes from here. They come
from the descriptor protoc generated from `proto/`, so a rename there moves
every caller at once and a typo cannot become a second, silently different name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

_SERVICE = pb.DESCRIPTOR.services_by_name["SentinelService"]
SERVICE: str = _SERVICE.full_name  # "sentinel.v1.SentinelService"


@dataclass(frozen=True)
class Method(Generic[Req, Resp]):
    """One unary method: its short name, its HTTP/2 path and its message classes."""

    name: str
    request: type[Req]
    response: type[Resp]

    @property
    def path(self) -> str:
        """`/sentinel.v1.SentinelService/Heartbeat`: the gRPC :path and the Connect URL path."""
        return f"/{SERVICE}/{self.name}"


def _method(name: str, request: type[Req], response: type[Resp]) -> Method[Req, Resp]:
    desc = _SERVICE.methods_by_name[name]  # KeyError here: proto/ and this module disagree
    if (desc.input_type.full_name, desc.output_type.full_name) != (
        request.DESCRIPTOR.full_name,
        response.DESCRIPTOR.full_name,
    ):
        raise TypeError(f"{SERVICE}/{name}: message types differ from proto/")
    return Method(name, request, response)


REGISTER = _method("Register", pb.RegisterRequest, pb.RegisterResponse)
HEARTBEAT = _method("Heartbeat", pb.HeartbeatRequest, pb.HeartbeatResponse)
METHODS: tuple[Method[Message, Message], ...] = (REGISTER, HEARTBEAT)  # type: ignore[assignment]
BY_NAME: dict[str, Method[Message, Message]] = {m.name: m for m in METHODS}

if set(BY_NAME) != set(_SERVICE.methods_by_name):
    raise TypeError(f"{SERVICE}: methods in proto/ and in this module differ")

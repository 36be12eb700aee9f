"""Decoding request bodies (binary protobuf or proto3 JSON) with size limits.

gRPC handlers receive raw bytes (no deserializer registered) so that a bad
body becomes INVALID_ARGUMENT naming the problem, instead of grpcio's generic
INTERNAL "Exception deserializing request". The Connect endpoint uses the
same functions, so both transports reject the same inputs the same way.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from sennet.controlplane.refusals import invalid

M = TypeVar("M", bound=Message)


def _check_size(data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise invalid("request", f"message of {len(data)} bytes exceeds the limit of {limit} bytes")


def from_proto(cls: type[M], data: bytes, limit: int) -> M:
    """Parse binary protobuf; INVALID_ARGUMENT on oversize or undecodable bytes."""
    _check_size(data, limit)
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise invalid(
            "request", f"not a valid {cls.DESCRIPTOR.full_name} protobuf ({exc})"
        ) from exc
    return msg


def from_json(cls: type[M], data: bytes, limit: int) -> M:
    """Parse proto3 JSON (the Connect unary JSON form); unknown fields are an error."""
    _check_size(data, limit)
    msg = cls()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid("request", f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        json_format.Parse(text, msg)
    except json_format.ParseError as exc:
        raise invalid("request", f"not a valid {cls.DESCRIPTOR.full_name} JSON ({exc})") from exc
    return msg


def to_json(msg: Message) -> bytes:
    """proto3 JSON with the canonical camelCase names, as Connect clients expect."""
    return json_format.MessageToJson(msg, indent=None).encode()

"""One gRPC channel per control-plane replica, all with the same TLS settings.

Channels are opened when an address is first used and kept: a replica the
agent failed over from keeps its channel, whose own reconnect attempts (capped
at 5 s, not grpc's default 120 s) make a later failback probe find the
replica as soon as it is back. TLS credentials and `tls_server_name` apply to
every address, so replicas behind one certificate name need it set once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from sennet.common.errors import UserError
from sennet.proto.contract import HEARTBEAT, REGISTER, Method, Req, Resp
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb


def _unary(
    channel: grpc.Channel, method: Method[Req, Resp]
) -> grpc.UnaryUnaryMultiCallable[Req, Resp]:
    """A callable for one RPC; path and message classes come from the compiled proto."""
    return channel.unary_unary(
        method.path,
        request_serializer=method.request.SerializeToString,
        response_deserializer=method.response.FromString,
    )


@dataclass(frozen=True)
class Replica:
    """The calls the sink makes to one address."""

    address: str
    channel: grpc.Channel
    register: grpc.UnaryUnaryMultiCallable[pb.RegisterRequest, pb.RegisterResponse]
    heartbeat: grpc.UnaryUnaryMultiCallable[pb.HeartbeatRequest, pb.HeartbeatResponse]


class Replicas:
    """Channels by address, opened on first use and closed together."""

    def __init__(
        self,
        credentials: grpc.ChannelCredentials | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self._credentials = credentials
        self._options: list[tuple[str, str | int]] = [
            # grpc's own reconnect backoff defaults to a 120 s cap; ours governs retries.
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.min_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5000),
            ("grpc.enable_retries", 0),
        ]
        if tls_server_name:
            self._options.append(("grpc.ssl_target_name_override", tls_server_name))
        self._open: dict[str, Replica] = {}

    def get(self, address: str) -> Replica:
        replica = self._open.get(address)
        if replica is None:
            if self._credentials is not None:
                channel = grpc.secure_channel(address, self._credentials, options=self._options)
            else:
                channel = grpc.insecure_channel(address, options=self._options)
            replica = Replica(
                address, channel, _unary(channel, REGISTER), _unary(channel, HEARTBEAT)
            )
            self._open[address] = replica
        return replica

    def close(self) -> None:
        """Close every channel (cancels calls in flight, so a stop stays prompt)."""
        for replica in list(self._open.values()):
            replica.channel.close()


def credentials_from_files(
    tls_ca: str | None, tls_cert: str | None, tls_key: str | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM files (None = plaintext); a file that cannot be read is the
    operator's error, named."""

    def read(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {what} {path}: {exc.strerror}") from exc

    if not tls_ca:
        return None
    ca = read(tls_ca, "tls_ca")
    key = read(tls_key, "tls_key") if tls_key else None
    cert = read(tls_cert, "tls_cert") if tls_cert else None
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )

"""OTLP/gRPC and OTLP/HTTP senders, and what an answer means under the OTLP rules.

Both take the request already serialized, so a batch held in the queue is
encoded once whatever the number of retries or endpoints. The specification's
failure rules are decided here, in one place per transport:

- gRPC: retryable are UNAVAILABLE, ABORTED, CANCELLED, DEADLINE_EXCEEDED,
  OUT_OF_RANGE, DATA_LOSS, and RESOURCE_EXHAUSTED only when the server sent a
  RetryInfo (it can recover); a RetryInfo delay is a floor for the next try.
- HTTP: retryable are 429, 502, 503 and 504; Retry-After (seconds or a date)
  is a floor for the next try. Anything else non-2xx is permanent.
- A success may be partial: the response's rejected count is reported so the
  sink can count it (the data was refused, not lost in transit: no retry).
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as ls
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms

from sennet.agent.sinks.otlp.settings import Endpoint, OtlpOptions

METRICS, LOGS = "metrics", "logs"
Response = ms.ExportMetricsServiceResponse | ls.ExportLogsServiceResponse
RESPONSES: dict[str, type[Response]] = {
    METRICS: ms.ExportMetricsServiceResponse,
    LOGS: ls.ExportLogsServiceResponse,
}
HTTP_PATHS = {METRICS: "/v1/metrics", LOGS: "/v1/logs"}
RETRYABLE_GRPC = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    }
)
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})


def grpc_path(signal: str) -> str:
    """`/package.Service/Export`, taken from the official descriptors, never typed by hand."""
    module = ms if signal == METRICS else ls
    service = "MetricsService" if signal == METRICS else "LogsService"
    return f"/{module.DESCRIPTOR.services_by_name[service].full_name}/Export"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    retryable: bool = False
    retry_after_s: float | None = None  # the server's throttling hint
    rejected: int = 0  # partial success: items the receiver refused
    error: str = ""  # short and free of secrets: a status code or "HTTP 503"
    message: str = ""  # a partial success's error_message, from the collector


def rejected_count(
    signal: str, response: ms.ExportMetricsServiceResponse | ls.ExportLogsServiceResponse
) -> tuple[int, str]:
    partial = response.partial_success
    if isinstance(partial, ms.ExportMetricsPartialSuccess):
        return int(partial.rejected_data_points), partial.error_message
    return int(partial.rejected_log_records), partial.error_message


class Transport(Protocol):
    endpoint: Endpoint

    def export(self, signal: str, body: bytes) -> Outcome: ...

    def close(self) -> None: ...


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


class GrpcTransport:
    """One channel per endpoint; gzip per call; headers as call metadata."""

    def __init__(self, endpoint: Endpoint, opts: OtlpOptions, user_agent: str) -> None:
        self.endpoint = endpoint
        self._opts = opts
        target = f"{endpoint.host}:{endpoint.port}"
        options: list[tuple[str, str | int]] = [
            ("grpc.primary_user_agent", user_agent),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if opts.tls_server_name:
            options.append(("grpc.ssl_target_name_override", opts.tls_server_name))
        if endpoint.tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(opts.tls_ca) if opts.tls_ca else None,
                private_key=_read(opts.tls_key) if opts.tls_key else None,
                certificate_chain=_read(opts.tls_cert) if opts.tls_cert else None,
            )
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._calls: dict[str, grpc.UnaryUnaryMultiCallable[bytes, Response]] = {
            signal: self._channel.unary_unary(
                grpc_path(signal),
                request_serializer=None,  # the body is serialized already
                response_deserializer=RESPONSES[signal].FromString,
            )
            for signal in (METRICS, LOGS)
        }
        self._metadata = tuple(opts.headers)

    def export(self, signal: str, body: bytes) -> Outcome:
        try:
            response = self._calls[signal](
                body,
                timeout=self._opts.timeout_s,
                metadata=self._metadata,
                compression=grpc.Compression.Gzip if self._opts.gzip else None,
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            hint = _retry_info(exc)
            retryable = code in RETRYABLE_GRPC or (
                code == grpc.StatusCode.RESOURCE_EXHAUSTED and hint is not None
            )
            return Outcome(False, retryable, hint, error=code.name)
        rejected, message = rejected_count(signal, response)
        return Outcome(True, rejected=rejected, message=message[:200])

    def close(self) -> None:
        self._channel.close()


def _retry_info(exc: grpc.RpcError) -> float | None:
    """The RetryInfo delay in the status details (grpc-status-details-bin), if any."""
    if not isinstance(exc, grpc.Call):
        return None
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


class HttpTransport:
    """OTLP/HTTP with binary protobuf; one kept-alive connection, reopened after an error."""

    def __init__(self, endpoint: Endpoint, opts: OtlpOptions, user_agent: str) -> None:
        self.endpoint = endpoint
        self._opts = opts
        self._conn: http.client.HTTPConnection | None = None
        self._headers = {
            **dict(opts.headers),
            "Content-Type": "application/x-protobuf",
            "User-Agent": user_agent,
        }
        if opts.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._context: ssl.SSLContext | None = None
        if endpoint.tls:
            ctx = ssl.create_default_context(cafile=opts.tls_ca or None)
            if opts.tls_cert:
                ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
            self._context = ctx

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            ep, timeout = self.endpoint, self._opts.timeout_s
            if self._context is not None:
                self._conn = _ServerNameHTTPS(
                    ep.host,
                    ep.port,
                    timeout=timeout,
                    context=self._context,
                    server_name=self._opts.tls_server_name or ep.host,
                )
            else:
                self._conn = http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)
        return self._conn

    def export(self, signal: str, body: bytes) -> Outcome:
        payload = gzip.compress(body, compresslevel=6) if self._opts.gzip else body
        try:
            conn = self._connection()
            conn.request(
                "POST", self.endpoint.base_path + HTTP_PATHS[signal], payload, self._headers
            )
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Outcome(False, True, error=type(exc).__name__)
        if 200 <= response.status < 300:
            if response.getheader("Content-Encoding", "") == "gzip":
                data = gzip.decompress(data)
            try:
                rejected, message = rejected_count(signal, RESPONSES[signal].FromString(data))
            except Exception:  # a 2xx with a body we cannot read still accepted the data
                rejected, message = 0, ""
            return Outcome(True, rejected=rejected, message=message[:200])
        retryable = response.status in RETRYABLE_HTTP
        hint = parse_retry_after(response.getheader("Retry-After")) if retryable else None
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        return Outcome(False, retryable, hint, error=f"HTTP {response.status}")

    def close(self) -> None:
        """Also from another thread, to cut a call in flight: closing the socket alone does
        not wake a `recv` blocked on it (it would wait out `timeout_s`); shutting it down does."""
        conn = self._conn
        if conn is not None:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            conn.close()
            self._conn = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _ServerNameHTTPS(http.client.HTTPSConnection):
    """HTTPS whose certificate is checked against a configured name, not the address."""

    def __init__(
        self, host: str, port: int, *, timeout: float, context: ssl.SSLContext, server_name: str
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name
        self._ctx = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._ctx.wrap_socket(self.sock, server_hostname=self._server_name)


def make_transport(endpoint: Endpoint, opts: OtlpOptions, user_agent: str) -> Transport:
    if endpoint.protocol == "grpc":
        return GrpcTransport(endpoint, opts, user_agent)
    return HttpTransport(endpoint, opts, user_agent)

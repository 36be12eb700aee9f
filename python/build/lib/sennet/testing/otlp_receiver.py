"""A real OTLP receiver for tests: the official collector services over gRPC and HTTP.

gRPC serves `opentelemetry.proto.collector.{metrics,logs}.v1` through the
servicers generated in the official `opentelemetry-proto` package; HTTP
accepts `POST /v1/metrics` and `/v1/logs` with binary protobuf, gzip or not.
Every attempt is recorded with its arrival time (failed ones too, so a test
can measure how long a sender waited after a throttling hint), and the
receiver can be told to fail the next N calls the ways the OTLP specification
distinguishes, or be taken down and brought back on the same ports.
"""

from __future__ import annotations

import gzip
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as ls
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as ls_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as ms_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2

from sennet.common.retry import retry

METRICS, LOGS = "metrics", "logs"
Request = ms.ExportMetricsServiceRequest | ls.ExportLogsServiceRequest
FAULTS = ("unavailable", "throttle", "exhausted", "http_503", "partial", "invalid")


@dataclass(frozen=True)
class Arrival:
    """One export call as the receiver saw it."""

    signal: str
    transport: str  # "grpc" or "http"
    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    gzip: bool  # HTTP: the body came gzip-encoded
    answer: str  # "ok", "partial" or the fault it was given
    request: Request


@dataclass
class Fault:
    kind: str  # one of FAULTS
    times: int
    retry_after_s: float = 0.0
    rejected: int = 0
    signal: str | None = None  # only calls of this signal; None = any


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate signed by it


@dataclass
class OtlpReceiver:
    """Both transports on loopback; `start()` binds, `stop()` takes them down."""

    tls: Tls | None = None
    grpc_port: int = 0
    http_port: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    _faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _grpc: grpc.Server | None = None
    _http: ThreadingHTTPServer | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> OtlpReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        ms_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), server)  # type: ignore[no-untyped-call]
        ls_grpc.add_LogsServiceServicer_to_server(_Logs(self), server)  # type: ignore[no-untyped-call]
        address = f"127.0.0.1:{self.grpc_port}"
        if self.tls is not None:
            creds = grpc.ssl_server_credentials(
                [(self.tls.key.read_bytes(), self.tls.cert.read_bytes())],
                root_certificates=self.tls.client_ca.read_bytes() if self.tls.client_ca else None,
                require_client_auth=self.tls.client_ca is not None,
            )
            self.grpc_port = server.add_secure_port(address, creds)
        else:
            self.grpc_port = server.add_insecure_port(address)
        server.start()
        self._grpc = server
        http = ThreadingHTTPServer(("127.0.0.1", self.http_port), _handler(self))
        http.daemon_threads = True
        if self.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.tls.cert, self.tls.key)
            if self.tls.client_ca is not None:
                ctx.load_verify_locations(self.tls.client_ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
            http.socket = ctx.wrap_socket(http.socket, server_side=True)
        self.http_port = http.server_address[1]
        threading.Thread(target=http.serve_forever, name="otlp-http", daemon=True).start()
        self._http = http
        return self

    def stop(self) -> None:
        """Down: both ports refuse connections until `start()` again (same ports)."""
        if self._grpc is not None:
            self._grpc.stop(0).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def grpc_endpoint(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    # -- faults ---------------------------------------------------------------

    def fail(self, kind: str, times: int = 1, **how: Any) -> None:
        """Answer the next `times` calls with `kind` (see FAULTS); queued after earlier faults."""
        if kind not in FAULTS:
            raise ValueError(kind)
        with self._lock:
            self._faults.append(Fault(kind, times, **how))

    def _answer(self, signal: str) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.signal in (None, signal):
                    f.times -= 1
                    if f.times <= 0:
                        self._faults.remove(f)
                    return f
        return None

    def _record(self, arrival: Arrival) -> None:
        with self._lock:
            self.arrivals.append(arrival)

    # -- what arrived ---------------------------------------------------------

    def accepted(self, signal: str) -> list[Arrival]:
        with self._lock:
            return [a for a in self.arrivals if a.signal == signal and a.answer == "ok"]

    def log_records(self) -> list[logs_pb2.LogRecord]:
        out: list[logs_pb2.LogRecord] = []
        for a in self.accepted(LOGS):
            assert isinstance(a.request, ls.ExportLogsServiceRequest)
            for rl in a.request.resource_logs:
                for sl in rl.scope_logs:
                    out.extend(sl.log_records)
        return out

    def latest_points(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """Data points of metric `name` in the newest accepted metrics request, by attributes."""
        for a in reversed(self.accepted(METRICS)):
            assert isinstance(a.request, ms.ExportMetricsServiceRequest)
            found = {}
            for rm in a.request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        if m.name == name and kind is not None:
                            for p in getattr(m, kind).data_points:
                                found[tuple(sorted(attributes(p.attributes).items()))] = p
            if found:
                return found
        return {}

    def value(self, name: str, **attrs: Any) -> Any:
        """The newest value of one series (attributes given exactly), or None."""
        point = self.latest_points(name).get(tuple(sorted(attrs.items())))
        if point is None:
            return None
        if hasattr(point, "as_int"):
            return point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
        return point

    def wait_until(self, what: str, predicate: Callable[[], object], timeout: float = 30) -> None:
        retry(lambda _last: True if predicate() else None, timeout, 0.05, what)


def attributes(kvs: Iterator[common_pb2.KeyValue] | Any) -> dict[str, Any]:
    """KeyValues as a plain dict (strings, ints, floats, bools)."""
    out: dict[str, Any] = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


# -- gRPC ------------------------------------------------------------------------


def _grpc_fault(context: grpc.ServicerContext, fault: Fault) -> None:
    if fault.kind == "throttle":
        info = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=int(fault.retry_after_s), nanos=int(fault.retry_after_s % 1 * 1e9)
            )
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED, message="throttled", details=[detail]
        )
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "throttled")
    codes = {
        "unavailable": grpc.StatusCode.UNAVAILABLE,
        "http_503": grpc.StatusCode.UNAVAILABLE,
        "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    }
    context.abort(codes[fault.kind], f"told to fail: {fault.kind}")


class _Metrics(ms_grpc.MetricsServiceServicer):
    def __init__(self, rx: OtlpReceiver) -> None:
        self.rx = rx

    def Export(
        self, request: ms.ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> ms.ExportMetricsServiceResponse:
        fault = self.rx._answer(METRICS)
        answer = fault.kind if fault else "ok"
        self.rx._record(
            Arrival(METRICS, "grpc", time.monotonic(), _md(context), False, answer, request)
        )
        if fault is not None and fault.kind != "partial":
            _grpc_fault(context, fault)
        if fault is not None:
            return ms.ExportMetricsServiceResponse(
                partial_success=ms.ExportMetricsPartialSuccess(
                    rejected_data_points=fault.rejected, error_message="told to reject"
                )
            )
        return ms.ExportMetricsServiceResponse()


class _Logs(ls_grpc.LogsServiceServicer):
    def __init__(self, rx: OtlpReceiver) -> None:
        self.rx = rx

    def Export(
        self, request: ls.ExportLogsServiceRequest, context: grpc.ServicerContext
    ) -> ls.ExportLogsServiceResponse:
        fault = self.rx._answer(LOGS)
        answer = fault.kind if fault else "ok"
        self.rx._record(
            Arrival(LOGS, "grpc", time.monotonic(), _md(context), False, answer, request)
        )
        if fault is not None and fault.kind != "partial":
            _grpc_fault(context, fault)
        if fault is not None:
            return ls.ExportLogsServiceResponse(
                partial_success=ls.ExportLogsPartialSuccess(
                    rejected_log_records=fault.rejected, error_message="told to reject"
                )
            )
        return ls.ExportLogsServiceResponse()


def _md(context: grpc.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}


# -- HTTP ------------------------------------------------------------------------

_HTTP_STATUS = {"unavailable": 503, "http_503": 503, "throttle": 429, "exhausted": 429,
                "invalid": 400}  # fmt: skip


def _handler(rx: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            signal = {"/v1/metrics": METRICS, "/v1/logs": LOGS}.get(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if signal is None:
                self._reply(404, b"")
                return
            zipped = self.headers.get("Content-Encoding", "") == "gzip"
            raw = gzip.decompress(body) if zipped else body
            request: Request = (
                ms.ExportMetricsServiceRequest.FromString(raw)
                if signal == METRICS
                else ls.ExportLogsServiceRequest.FromString(raw)
            )
            fault = rx._answer(signal)
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = fault.kind if fault else "ok"
            rx._record(Arrival(signal, "http", time.monotonic(), headers, zipped, answer, request))
            if fault is None:
                ok = ms.ExportMetricsServiceResponse() if signal == METRICS else None
                self._reply(200, (ok or ls.ExportLogsServiceResponse()).SerializeToString())
            elif fault.kind == "partial":
                response = (
                    ms.ExportMetricsServiceResponse(
                        partial_success=ms.ExportMetricsPartialSuccess(
                            rejected_data_points=fault.rejected, error_message="told to reject"
                        )
                    )
                    if signal == METRICS
                    else ls.ExportLogsServiceResponse(
                        partial_success=ls.ExportLogsPartialSuccess(
                            rejected_log_records=fault.rejected, error_message="told to reject"
                        )
                    )
                )
                self._reply(200, response.SerializeToString())
            else:
                extra = {}
                if fault.kind == "throttle":
                    extra["Retry-After"] = str(int(fault.retry_after_s))
                status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=fault.kind)
                self._reply(_HTTP_STATUS[fault.kind], status.SerializeToString(), extra)

        def _reply(self, code: int, body: bytes, extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

    return Handler

"""OTLP endpoints and options, parsed from the agent's settings table.

An endpoint names its protocol by scheme, so one list can mix them:
`grpc://host:4317` and `grpcs://host:4317` (OTLP/gRPC, plaintext or TLS),
`http://host:4318` and `https://host:4318` (OTLP/HTTP protobuf; the signal
paths `/v1/metrics` and `/v1/logs` are appended to the base path, as the OTLP
exporter specification says for a base endpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:  # config.py validates with this module's parsers
    from sennet.agent.config import AgentConfig

SCHEMES = {
    "grpc": ("grpc", False),
    "grpcs": ("grpc", True),
    "http": ("http", False),
    "https": ("http", True),
}


@dataclass(frozen=True)
class Endpoint:
    text: str  # as configured, for logs (never carries credentials: those go in headers)
    protocol: str  # "grpc" or "http"
    tls: bool
    host: str
    port: int
    base_path: str = ""  # HTTP only, without a trailing slash


def parse_endpoint(text: str) -> Endpoint:
    """`scheme://host:port[/path]`; raises ValueError naming what is wrong."""
    parts = urlsplit(text)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}")
    protocol, tls = SCHEMES[parts.scheme]
    try:
        port = parts.port
    except ValueError:
        raise ValueError("port must be 1..65535") from None
    if not parts.hostname or port is None:
        raise ValueError("host and port are required")
    if parts.username or parts.password:
        raise ValueError("credentials belong in otlp_headers, not in the address")
    if protocol == "grpc" and parts.path not in ("", "/"):
        raise ValueError("an OTLP/gRPC endpoint has no path")
    return Endpoint(text, protocol, tls, parts.hostname, port, parts.path.rstrip("/"))


def parse_headers(text: str) -> tuple[tuple[str, str], ...]:
    """`key=value,key2=value2` (the OTEL_EXPORTER_OTLP_HEADERS form: values percent-decoded,
    so `%2C` is a comma); keys lower-cased."""
    out = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), unquote(value.strip())
        if (
            not sep
            or not key
            or any(c in key for c in " :\r\n")
            or any(c in value for c in "\r\n\0")
        ):
            raise ValueError("headers look like key=value,key2=value2")
        out.append((key, value))
    return tuple(out)


def check_endpoints(v: Any) -> str | None:
    """The settings table's check: a complaint, or None."""
    for text in v:
        try:
            parse_endpoint(text)
        except ValueError as exc:
            return f"grpc://, grpcs://, http:// or https:// host:port addresses ({text!r}: {exc})"
    return None


def check_headers(v: Any) -> str | None:
    """The settings table's check; the value is secret, so the complaint never quotes it."""
    try:
        parse_headers(v)
    except ValueError:
        return "key=value,key2=value2"
    return None


@dataclass(frozen=True)
class OtlpOptions:
    """Everything the exporter needs; the defaults suit a 10 s interval."""

    endpoints: tuple[Endpoint, ...]
    headers: tuple[tuple[str, str], ...] = ()
    tls_ca: str = ""
    tls_server_name: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    queue_bytes: int = 8 << 20
    timeout_s: float = 10.0
    failback: bool = True  # return to the first endpoint once it answers again
    gzip: bool = True
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    close_flush_s: float = 2.0


def from_config(cfg: AgentConfig) -> OtlpOptions:
    """Options from the agent's settings (validated there: these parses cannot fail)."""
    return OtlpOptions(
        endpoints=tuple(parse_endpoint(t) for t in cfg.otlp_endpoints),
        headers=parse_headers(cfg.otlp_headers),
        tls_ca=cfg.otlp_tls_ca,
        tls_server_name=cfg.otlp_tls_server_name,
        tls_cert=cfg.otlp_tls_cert,
        tls_key=cfg.otlp_tls_key,
        queue_bytes=cfg.otlp_queue_bytes,
        timeout_s=cfg.otlp_timeout_s,
        failback=cfg.otlp_failback,
        gzip=cfg.otlp_compression == "gzip",
    )

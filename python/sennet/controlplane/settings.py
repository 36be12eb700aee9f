"""Control-plane settings: one table drives the flags, SENNET_CONTROLPLANE_* and --help.

Every setting is declared once in `SETTINGS` (name, parser, default, help),
shaped like the agent's `sennet.agent.config.SETTINGS`. From that table come
the `serve` flags (and the global `--db`, `--log-level`), the environment
variables (`SENNET_CONTROLPLANE_<NAME>`), the defaults shown by `--help` and
the `Settings` value the control plane runs with, so they cannot disagree.
Precedence: default < environment < flag. Every error names the flag or
variable, the key and what was expected, and exits 2 through `run_main`.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sennet.common.errors import UserError

if TYPE_CHECKING:  # the gRPC server loads only where `serve` asks for TLS
    from sennet.controlplane.grpc_server import TlsFiles

ENV_PREFIX = "SENNET_CONTROLPLANE_"
GLOBAL = "global"  # before the subcommand: every command needs these
SERVE = "serve"  # `serve` only


@dataclass(frozen=True)
class Setting:
    """One setting. `parse` turns text (a flag or variable) into the value or raises ValueError."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    expected: str  # what a valid value looks like, for error messages
    metavar: str
    scope: str = SERVE

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def is_bool(self) -> bool:
        return self.parse is _bool


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _listen(text: str) -> str:
    _host, sep, port = text.rpartition(":")
    if not (sep and port.isdigit() and int(port) < 65536):
        raise ValueError(text)
    return text


def _path(text: str) -> Path:
    if not text:
        raise ValueError(text)
    return Path(text)


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _number(low: float, *, above: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not (value > low if above else value >= low) or value != value or value == float("inf"):
            raise ValueError(text)
        return value

    return parse


def _positive_int(text: str) -> int:
    value = int(text, 0)
    if value <= 0:
        raise ValueError(text)
    return value


def _level(text: str) -> str:
    if text not in ("debug", "info", "warning", "error"):
        raise ValueError(text)
    return text


_SECONDS = "SECONDS"
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "db",
        _path,
        Path("/var/lib/sennet/controlplane.db"),
        "SQLite database file",
        "a file path",
        "PATH",
        GLOBAL,
    ),
    Setting(
        "log_level",
        _level,
        "info",
        "log verbosity",
        "debug, info, warning or error",
        "LEVEL",
        GLOBAL,
    ),
    Setting(
        "grpc_listen",
        _listen,
        "127.0.0.1:50051",
        "gRPC address (port 0 picks a free one)",
        '"host:port"',
        "HOST:PORT",
    ),
    Setting(
        "http_listen",
        _listen,
        "127.0.0.1:9469",
        "HTTP address for /health, /metrics and Connect",
        '"host:port"',
        "HOST:PORT",
    ),
    Setting(
        "tls_cert",
        _optional_path,
        None,
        "PEM server certificate (enables TLS on the gRPC and HTTP ports)",
        "a file path",
        "PATH",
    ),
    Setting(
        "tls_key", _optional_path, None, "PEM private key for --tls-cert", "a file path", "PATH"
    ),
    Setting(
        "tls_client_ca",
        _optional_path,
        None,
        "PEM CA; when given, agents must present a client certificate it signed",
        "a file path",
        "PATH",
    ),
    Setting(
        "retention_days",
        _number(0, above=True),
        30.0,
        "keep stored heartbeats and events this long",
        "a number of days > 0",
        "DAYS",
    ),
    Setting(
        "stale_after",
        _number(0, above=True),
        35.0,  # 3 missed 10 s heartbeats plus slack
        "sennet_agent_up drops to 0 after this long without a heartbeat",
        "a number of seconds > 0",
        _SECONDS,
    ),
    Setting(
        "max_request_bytes",
        _positive_int,
        1 << 20,  # 1 MiB: far above a full heartbeat (~60 KiB at 256 events)
        "largest accepted request body",
        "a positive integer",
        "BYTES",
    ),
    Setting(
        "idle_timeout",
        _positive_int,
        5,
        "either port closes a connection that has not sent a whole request head (HTTP) or "
        "the HTTP/2 preface (gRPC) this long after it opened, and an idle HTTP keep-alive one",
        "a positive integer",
        _SECONDS,
    ),
    Setting(
        "body_timeout",
        _number(0, above=True),
        10.0,  # a full 1 MiB body needs only ~1 Mbit/s to arrive in this time
        "the HTTP port answers 408 and closes a connection whose request body has not "
        "completely arrived this long after its head (a stalled or trickled body)",
        "a number of seconds > 0",
        _SECONDS,
    ),
    Setting(
        "http_max_connections",
        _positive_int,
        4096,
        "HTTP connections and requests in progress at most; past it a request is answered 503",
        "a positive integer",
        "COUNT",
    ),
    Setting(
        "max_pending_heartbeats",
        _positive_int,
        4096,  # a few seconds of the writer's throughput; beyond that waiting only adds latency
        "heartbeats queued for the writer at most; past it a heartbeat is refused "
        "RESOURCE_EXHAUSTED with a retry hint (the agent retries, nothing is lost)",
        "a positive integer",
        "COUNT",
    ),
    Setting(
        "max_concurrent_calls",
        _positive_int,
        1024,
        "gRPC SentinelService calls in progress at most; past it a call is refused "
        "RESOURCE_EXHAUSTED with a retry hint",
        "a positive integer",
        "COUNT",
    ),
    Setting(
        "max_series_per_agent",
        _positive_int,
        # one heartbeat can carry at most 64 interfaces x 4 + 32 kinds x 2 + 1 = 321, plus
        # flows 3 + DNS (32 types + 5 rcodes + 2) + TCP (2 directions + 4) + three
        # histograms of at most 65 buckets and a sum (198) = 567
        1024,
        "counter series one agent may create in total (interfaces x 4 + event kinds x 2 + 1, "
        "plus flow, DNS and TCP counters and histogram buckets); "
        "a heartbeat that would pass it is refused INVALID_ARGUMENT",
        "a positive integer",
        "COUNT",
    ),
    Setting(
        "max_talkers",
        _positive_int,
        100,
        "top talkers one heartbeat may carry; each is a labelled series per agent in /metrics, "
        "so this bounds their cardinality (a heartbeat with more is refused INVALID_ARGUMENT)",
        "a positive integer",
        "COUNT",
    ),
    Setting(
        "max_dns_names",
        _positive_int,
        100,
        "names in each DNS top list (queried, failing) of one heartbeat, bounding those "
        "series per agent (a heartbeat with more is refused INVALID_ARGUMENT)",
        "a positive integer",
        "COUNT",
    ),
    Setting(
        "histogram_export_step",
        _positive_int,
        1,
        "export every Nth bucket bound of the agents' latency histograms on /metrics (and +Inf): "
        "2 or 3 turn the agents' 28 log2 buckets into 14 or 10, 42 or 54 fewer series "
        "per agent; the counts exported stay exact, quantiles get coarser",
        "a positive integer",
        "COUNT",
    ),
    Setting(
        "reuse_port",
        _bool,
        False,
        "set SO_REUSEPORT on the gRPC port so several processes can share it "
        "(run one per core against the same --db)",
        "true or false",
        "BOOL",
    ),
    Setting(
        "writer_process",
        _bool,
        False,
        "run the heartbeat writer (SQL rows, group COMMIT) in a child process of its own, so "
        "its Python does not share the event loop's GIL; pays with a core per server process",
        "true or false",
        "BOOL",
    ),
    Setting(
        "fleet_refresh",
        _number(0, above=False),
        0.0,
        "reload every agent's state from the database this often (0 = never), so /metrics "
        "includes heartbeats stored by other processes sharing the port (use with --reuse-port)",
        "a number of seconds >= 0",
        _SECONDS,
    ),
    Setting(
        "ready_file",
        _optional_path,
        None,
        "write {grpc_port, http_port, pid} as JSON here once serving",
        "a file path",
        "PATH",
    ),
    Setting(
        "insecure_plaintext",
        _bool,
        False,
        "allow a plaintext port on an address other than loopback (bearer tokens then cross "
        "the network in the clear); without it such a listen address needs TLS",
        "true or false",
        "BOOL",
    ),
    Setting(
        "agent_token_cache",
        _number(0, above=False),
        1.0,
        "how long a checked agent token is trusted without reading the database again; a token "
        "revoked from the command line stops working within this time (0 = no cache)",
        "a number of seconds >= 0",
        _SECONDS,
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """The values the control plane runs with (one field per `SETTINGS` entry)."""

    db: Path
    log_level: str
    grpc_listen: str
    http_listen: str
    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None
    retention_days: float
    stale_after: float
    max_request_bytes: int
    idle_timeout: int
    body_timeout: float
    http_max_connections: int
    max_pending_heartbeats: int
    max_concurrent_calls: int
    max_series_per_agent: int
    max_talkers: int
    max_dns_names: int
    histogram_export_step: int
    reuse_port: bool
    writer_process: bool
    fleet_refresh: float
    ready_file: Path | None
    insecure_plaintext: bool
    agent_token_cache: float

    @property
    def retention_s(self) -> float:
        return self.retention_days * 86400.0

    @property
    def plaintext_exposed(self) -> list[str]:
        """The listen addresses that would carry bearer tokens in the clear beyond this host.

        Either port counts when it has no certificate (--tls-cert/--tls-key serve both)
        and is not on loopback.
        """
        exposed = []
        if self.tls is None and not is_loopback(self.grpc_listen):
            exposed.append(f"grpc {self.grpc_listen}")
        if self.tls is None and not is_loopback(self.http_listen):
            exposed.append(f"http {self.http_listen}")
        return exposed

    @property
    def tls(self) -> TlsFiles | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        from sennet.controlplane.grpc_server import TlsFiles

        return TlsFiles(self.tls_cert, self.tls_key, self.tls_client_ca)


if [f.name for f in fields(Settings)] != [s.name for s in SETTINGS]:
    raise TypeError("settings.Settings and settings.SETTINGS list different settings")


def defaults(**overrides: Any) -> Settings:
    """Every default, with `overrides` applied (tests and benchmarks build one this way)."""
    values = {s.name: s.default for s in SETTINGS}
    unknown = set(overrides) - set(values)
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}")
    values.update(overrides)
    return Settings(**values)


def add_flags(parser: argparse.ArgumentParser, scope: str) -> None:
    """One flag per setting of `scope`; None means "not given", so lower layers show through."""
    for s in SETTINGS:
        if s.scope != scope:
            continue
        shown = "none" if s.default is None else s.default
        helptext = f"{s.help} [default: {shown}; env {s.env}]".replace("%", "%%")
        if s.is_bool:
            parser.add_argument(
                s.flag,
                dest=f"set_{s.name}",
                action=argparse.BooleanOptionalAction,
                default=None,
                help=helptext,
            )
        else:
            parser.add_argument(
                s.flag, dest=f"set_{s.name}", default=None, metavar=s.metavar, help=helptext
            )


def _parse(s: Setting, text: str, where: str) -> Any:
    try:
        return s.parse(text)
    except ValueError:
        raise UserError(f"{where} ({s.name}): expected {s.expected}, got {text!r}") from None


def read(args: argparse.Namespace, environ: Mapping[str, str], scope: str) -> dict[str, Any]:
    """Values of one scope: default < environment variable < flag."""
    values: dict[str, Any] = {}
    for s in SETTINGS:
        if s.scope != scope:
            continue
        value = s.default
        if s.env in environ:
            value = _parse(s, environ[s.env], f"environment {s.env}")
        flag = getattr(args, f"set_{s.name}", None)
        if isinstance(flag, bool):
            value = flag
        elif flag is not None:
            value = _parse(s, flag, f"flag {s.flag}")
        values[s.name] = value
    return values


def build(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Every setting for `serve`, cross-checked."""
    values = read(args, environ, GLOBAL) | read(args, environ, SERVE)
    settings = Settings(**values)
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise UserError("--tls-cert and --tls-key go together")
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        raise UserError("--tls-client-ca needs --tls-cert and --tls-key")
    exposed = settings.plaintext_exposed
    if exposed and not settings.insecure_plaintext:
        raise UserError(
            f"refusing plaintext on a non-loopback address: {', '.join(exposed)}",
            hint="give --tls-cert/--tls-key (TLS on both ports), keep the ports on 127.0.0.1 "
            "(a reverse proxy can reach them), or accept the risk with --insecure-plaintext",
        )
    return settings


def is_loopback(listen: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; false for the wildcard and anything else."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "", a wildcard, or a host name that may resolve anywhere

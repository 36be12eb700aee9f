"""Agent configuration: one TOML file, then SENNET_* environment variables, then flags.

Every setting is declared once in `SETTINGS` (name, type, default, help). That
table drives the file parser, the environment overrides, the command-line flags
and `sennet-agent config --help`, so they cannot disagree. Validation happens
at start, and every error names the source (file and key, variable, or flag)
and what was expected.
"""

from __future__ import annotations

import argparse
import importlib.util
import mmap
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sennet.agent.sinks.endpoints import split_addresses
from sennet.agent.sinks.otlp.settings import check_endpoints, check_headers
from sennet.common.errors import UserError

ENV_PREFIX = "SENNET_"
DEFAULT_ASSETS = Path(__file__).resolve().parent / "datapath" / "assets"


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # "str", "int", "float", "bool", "list", "path"
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns a complaint, or None
    secret: bool = False


def _version(v: Any) -> str | None:
    parts = v.split(".") if isinstance(v, str) else []
    ok = 1 <= len(parts) <= 4 and all(p.isascii() and p.isdigit() for p in parts)
    return None if ok else 'a dotted version of digits, e.g. "0.2.0"'


def _positive(v: Any) -> str | None:
    return None if v > 0 else "a positive number"


def _ringbuf(v: Any) -> str | None:
    ok = v >= mmap.PAGESIZE and v & (v - 1) == 0 and v <= 1 << 30
    return None if ok else f"a power of two between {mmap.PAGESIZE} and 1073741824"


def _listen(v: Any) -> str | None:
    if v == "":
        return None
    host, sep, port = str(v).rpartition(":")
    ok = sep and port.isdigit() and 0 < int(port) < 65536 and host.isascii()
    return None if ok else '"host:port" (ASCII) or ""'


def _control_planes(v: Any) -> str | None:
    """One "host:port" or several, comma-separated, in order of preference."""
    if v == "":
        return None
    try:
        split_addresses(str(v))
    except ValueError as exc:
        return f'"host:port" or a comma-separated list of them ({exc})'
    return None


def _loader(v: Any) -> str | None:
    return None if v in ("libbpf", "bcc") else '"libbpf" or "bcc"'


def _attach(v: Any) -> str | None:
    return None if v in ("tc", "xdp") else '"tc" or "xdp"'


def _xdp_mode(v: Any) -> str | None:
    return None if v in ("auto", "native", "generic") else '"auto", "native" or "generic"'


def _level(v: Any) -> str | None:
    return None if v in ("debug", "info", "warning", "error") else "debug, info, warning or error"


def valid_ifname(name: str) -> bool:
    """What the kernel accepts as a link name (dev_valid_name): 1-15 bytes, not "." or "..",
    no "/", ":" or white space. Checked at start because a configured interface that does
    not exist yet is waited for, and a name that can never exist would wait forever."""
    return (
        0 < len(name.encode()) <= 15
        and name not in (".", "..")
        and not any(c in "/:" or c.isspace() for c in name)
    )


def _ifaces(v: Any) -> str | None:
    if not v:
        return "at least one interface name"
    bad = [n for n in v if not valid_ifname(n)]
    return f'interface names (1-15 bytes, no "/", ":" or spaces), not {bad[0]!r}' if bad else None


def _table_size(v: Any) -> str | None:
    return None if 1024 <= v <= 1 << 24 else "1024..16777216"


def _compression(v: Any) -> str | None:
    return None if v in ("gzip", "none") else '"gzip" or "none"'


def _flow_capacity(v: Any) -> str | None:
    return None if 1024 <= v <= 1 << 24 else "1024..16777216"


def _features(v: Any) -> str | None:
    bad = [n for n in v if n not in FEATURE_NAMES]
    return f"names from {', '.join(FEATURE_NAMES)}, not {bad[0]!r}" if bad else None


FEATURE_NAMES = ("flows", "bursts", "tcp", "dns")  # layout.Feature, by name


def _top_n(v: Any) -> str | None:
    return None if 1 <= v <= 1000 else "1..1000"


def _priority(v: Any) -> str | None:
    return None if 1 <= v <= 0xFFFF else "1..65535"


SETTINGS: tuple[Setting, ...] = (
    Setting("interfaces", "list", [], "monitored interfaces (required)", _ifaces),
    Setting("netns", "str", "", 'network namespace holding the interfaces ("" = the agent\'s own)'),
    Setting("loader", "str", "libbpf", 'BPF loader: "libbpf" (precompiled) or "bcc"', _loader),
    Setting("bpf_dir", "path", DEFAULT_ASSETS, "directory with *.bpf.o and the C sources"),
    Setting("pin_dir", "path", Path("/sys/fs/bpf/sennet"), "where maps are pinned (bpffs)"),
    Setting("state_dir", "path", Path("/var/lib/sennet"), "identity and tokens live here"),
    Setting("interval_s", "float", 10.0, "seconds between counter reads/heartbeats", _positive),
    Setting(
        "large_packet_bytes",
        "int",
        1514,
        "frames longer than this on the wire raise a large_packet event",
        _positive,
    ),
    Setting("ringbuf_bytes", "int", 256 * 1024, "event ring buffer size", _ringbuf),
    Setting(
        "features",
        "list",
        list(FEATURE_NAMES),
        "what the data plane runs beyond counters and events (set at load; one left out costs "
        "packets nothing: bench/features.py)",
        _features,
    ),
    Setting(
        "flow_capacity",
        "int",
        262144,
        "flows the LRU table holds (set at load; beyond it the least recently used is evicted)",
        _flow_capacity,
    ),
    Setting(
        "flow_idle_timeout_s",
        "float",
        120.0,
        "seconds without a packet after which the agent ends a flow",
        _positive,
    ),
    Setting("flow_top_n", "int", 10, "top talkers (by bytes) reported per interval", _top_n),
    Setting("tc_priority", "int", 1, "TC filter priority used on both hooks", _priority),
    Setting(
        "attach",
        "str",
        "tc",
        'receive-side hook: "tc" (TC ingress) or "xdp" (before GRO and VLAN offload); '
        "transmit always stays on TC egress",
        _attach,
    ),
    Setting(
        "xdp_mode",
        "str",
        "auto",
        'with attach = "xdp": "auto" (native where the driver supports it, else generic), '
        '"native" or "generic"',
        _xdp_mode,
    ),
    Setting("detach_on_exit", "bool", True, "remove the TC filters when the agent stops"),
    Setting(
        "metrics_listen", "str", "", 'local Prometheus endpoint "host:port" ("" = off)', _listen
    ),
    Setting("log_level", "str", "info", "debug, info, warning or error", _level),
    Setting("recent_events_max", "int", 256, "events kept for the next heartbeat", _positive),
    Setting(
        "max_queued_event_bytes",
        "int",
        4 << 20,
        "encoded bytes of events queued for the control plane at most (oldest dropped first)",
        _positive,
    ),
    Setting(
        "tcp_handshake_timeout",
        "float",
        10.0,
        "seconds a SYN may wait for its SYN/ACK before the attempt counts as unanswered",
        _positive,
    ),
    Setting(
        "tcp_handshakes_max",
        "int",
        65536,
        "TCP handshakes in progress the data plane tracks (an LRU table, sized at load)",
        _table_size,
    ),
    Setting(
        "control_plane",
        "str",
        "",
        'control plane gRPC "host:port" ("" = log only); several replicas on one database: '
        '"a:7443,b:7443", in order of preference (a failed one is left for the next at once)',
        _control_planes,
    ),
    Setting(
        "control_plane_failback_s",
        "float",
        60.0,
        "away from the first control_plane address, try it again at most this often "
        "(and stay there once it acknowledges)",
        _positive,
    ),
    Setting("bootstrap_token", "str", "", "enrolment token for the control plane", secret=True),
    Setting("tls_ca", "str", "", "CA bundle (PEM) to verify the control plane; empty = plaintext"),
    Setting("tls_server_name", "str", "", "expected TLS server name, if not the host"),
    Setting(
        "tls_cert",
        "str",
        "",
        "client certificate (PEM) presented to the control plane (mTLS); needs tls_key, tls_ca",
    ),
    Setting("tls_key", "str", "", "private key (PEM) of tls_cert"),
    Setting(
        "run_as",
        "str",
        "",
        'after attaching, run as this user ("name" or "uid:gid") keeping only CAP_NET_ADMIN '
        '("" = stay root)',
    ),
    Setting(
        "dns_timeout",
        "float",
        5.0,
        "seconds a DNS query may wait for its response before it counts as unanswered",
        _positive,
    ),
    Setting("dns_top_names", "int", 10, "query names in each DNS top list", _positive),
    Setting(
        "otlp_endpoints",
        "list",
        [],
        "OTLP collectors, in order of preference: grpc://, grpcs://, http://, https:// "
        "host:port[/path] (empty = no OTLP export)",
        check_endpoints,
    ),
    Setting(
        "otlp_headers",
        "str",
        "",
        "headers sent with every OTLP export, key=value,... (backend auth; never logged)",
        check_headers,
        secret=True,
    ),
    Setting("otlp_tls_ca", "str", "", "CA bundle (PEM) for grpcs:// and https:// endpoints"),
    Setting("otlp_tls_server_name", "str", "", "expected TLS server name of OTLP endpoints"),
    Setting("otlp_tls_cert", "str", "", "client certificate (PEM) for OTLP over mTLS"),
    Setting("otlp_tls_key", "str", "", "private key (PEM) of otlp_tls_cert"),
    Setting(
        "otlp_queue_bytes",
        "int",
        8 << 20,
        "bytes of encoded exports held while collectors are unreachable",
        _positive,
    ),
    Setting("otlp_timeout_s", "float", 10.0, "deadline of one OTLP export call", _positive),
    Setting(
        "otlp_failback",
        "bool",
        True,
        "return to the first OTLP endpoint once it answers again (false: stay where it works)",
    ),
    Setting("otlp_compression", "str", "gzip", '"gzip" or "none"', _compression),
    Setting(
        "image_env",
        "path",
        Path("/run/sennet/image.env"),
        "the booted image's version, digest and slot (written at boot; absent = not reported)",
    ),
    Setting(
        "early_attach_file",
        "path",
        Path("/run/sennet/early-attach.applied"),
        "what the boot-time loader attached (written at boot; the agent adopts it at start, "
        "and writes its plan for the next boot beside its state)",
    ),
    Setting(
        "update_status",
        "path",
        Path("/var/lib/sennet/update/status.json"),
        "the updater's status file; its last_outcome rides the heartbeat (absent = none)",
    ),
    Setting(
        "update_max_bytes",
        "int",
        1 << 30,
        "largest update bundle the agent fetches when the control plane offers one",
        _positive,
    ),
    Setting(
        "control_plane_http",
        "str",
        "",
        'where offered bundles are fetched: "http(s)://host:port" ("" = the gRPC host in use '
        "and the port the offer names; https when tls_ca is set)",
    ),
    # Read by the root updater (python -m sennet.update.cli), not by the agent itself.
    Setting(
        "update_min_version",
        "str",
        "0.0.0",
        "updates: refuse a bundle older than this version (downgrade floor)",
        _version,
    ),
    Setting(
        "update_health_timeout_s",
        "float",
        90.0,
        "updates: seconds a slot on trial has to pass its health check before rollback",
        _positive,
    ),
    Setting(
        "update_tries",
        "int",
        2,
        "updates: boots a new slot gets (systemd-boot counter) before it counts as bad",
        _positive,
    ),
    Setting(
        "update_from_usb",
        "bool",
        True,
        "updates: install a signed bundle found at the top level of a newly plugged USB stick",
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class AgentConfig:
    interfaces: tuple[str, ...]
    netns: str
    loader: str
    bpf_dir: Path
    pin_dir: Path
    state_dir: Path
    interval_s: float
    large_packet_bytes: int
    ringbuf_bytes: int
    features: tuple[str, ...]
    flow_capacity: int
    flow_idle_timeout_s: float
    flow_top_n: int
    tc_priority: int
    attach: str
    xdp_mode: str
    detach_on_exit: bool
    metrics_listen: str
    log_level: str
    recent_events_max: int
    max_queued_event_bytes: int
    tcp_handshake_timeout: float
    tcp_handshakes_max: int
    control_plane: str
    control_plane_failback_s: float
    bootstrap_token: str
    tls_ca: str
    tls_server_name: str
    tls_cert: str
    tls_key: str
    run_as: str
    dns_timeout: float
    dns_top_names: int
    otlp_endpoints: tuple[str, ...]
    otlp_headers: str
    otlp_tls_ca: str
    otlp_tls_server_name: str
    otlp_tls_cert: str
    otlp_tls_key: str
    otlp_queue_bytes: int
    otlp_timeout_s: float
    otlp_failback: bool
    otlp_compression: str
    image_env: Path
    early_attach_file: Path
    update_status: Path
    update_max_bytes: int
    control_plane_http: str
    update_min_version: str = "0.0.0"
    update_health_timeout_s: float = 90.0
    update_tries: int = 2
    update_from_usb: bool = True

    def public_view(self) -> dict[str, Any]:
        """Settings for logs and `config show`: secrets replaced."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if BY_NAME[f.name].secret and value:
                value = "<redacted>"
            out[f.name] = list(value) if isinstance(value, tuple) else value
            if isinstance(value, Path):
                out[f.name] = str(value)
        return out


_TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list": "a list of strings",
    "path": "a path string",
}


def _coerce(setting: Setting, value: Any, where: str) -> Any:
    """Check a value parsed from TOML (already typed) against its setting."""
    kind = setting.kind
    expected = _TYPE_NAMES[kind]
    ok = {
        "str": isinstance(value, str),
        "path": isinstance(value, str) and value != "",
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "list": isinstance(value, list) and all(isinstance(x, str) for x in value),
    }[kind]
    if not ok:
        raise UserError(f"{where}: expected {expected}, got {value!r}")
    if kind == "path":
        return Path(value)
    if kind == "float":
        return float(value)
    return value


def _parse_text(setting: Setting, text: str, where: str) -> Any:
    """Parse an environment variable or flag (always text) into the setting's type."""
    kind = setting.kind
    try:
        if kind == "int":
            return int(text, 0)
        if kind == "float":
            return float(text)
    except ValueError:
        raise UserError(f"{where}: expected {_TYPE_NAMES[kind]}, got {text!r}") from None
    if kind == "bool":
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{where}: expected true or false, got {text!r}")
    if kind == "list":
        return [x.strip() for x in text.split(",") if x.strip()]
    if kind == "path":
        if not text:
            raise UserError(f"{where}: expected a path, got an empty string")
        return Path(text)
    return text


def read_file(path: Path) -> dict[str, Any]:
    """Parse the TOML file; unknown keys and wrong types are errors naming file and key."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        setting = BY_NAME.get(key)
        if setting is None:
            near = [n for n in BY_NAME if n.split("_")[0] == key.split("_")[0]]
            hint = f"did you mean {near[0]!r}?" if near else "see `sennet-agent config --help`"
            raise UserError(f"{path}: unknown key {key!r}", hint=hint)
        values[key] = _coerce(setting, value, f"{path}: key {key!r}")
    return values


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        var = ENV_PREFIX + setting.name.upper()
        if var in environ:
            values[setting.name] = _parse_text(setting, environ[var], f"environment {var}")
    return values


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per setting; None means "not given" so lower layers show through."""
    group = parser.add_argument_group("settings (override the file and SENNET_* variables)")
    for s in SETTINGS:
        flag = "--" + s.name.replace("_", "-")
        shown = ",".join(s.default) if s.kind == "list" else s.default
        helptext = f"{s.help} [default: {shown!r}]" if not s.secret else s.help
        if s.kind == "list":
            helptext += " (comma-separated)"
        group.add_argument(
            flag, dest=f"set_{s.name}", default=None, metavar=s.kind.upper(), help=helptext
        )


def read_flags(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for s in SETTINGS:
        text = getattr(args, f"set_{s.name}", None)
        if text is not None:
            values[s.name] = _parse_text(s, text, f"flag --{s.name.replace('_', '-')}")
    return values


def build(
    file: Path | None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    require_interfaces: bool = True,
) -> AgentConfig:
    """Merge defaults < file < environment < flags, then validate every value.

    Read-only commands (status, reset) pass require_interfaces=False: they need
    pin_dir, not a list of interfaces to attach to.
    """
    merged: dict[str, Any] = {s.name: s.default for s in SETTINGS}
    origin: dict[str, str] = {s.name: "default" for s in SETTINGS}
    layers: list[tuple[str, dict[str, Any]]] = []
    if file is not None:
        layers.append((str(file), read_file(file)))
    layers.append(("environment", read_env(os.environ if environ is None else environ)))
    layers.append(("flags", dict(flags or {})))
    for name, layer in layers:
        for key, value in layer.items():
            merged[key] = value
            origin[key] = name
    for s in SETTINGS:
        if s.name == "interfaces" and not require_interfaces and not merged[s.name]:
            continue
        complaint = s.check(merged[s.name]) if s.check else None
        if complaint:
            src = origin[s.name]
            where = (
                f"{src}: key {s.name!r}"
                if src not in ("environment", "flags", "default")
                else (f"{s.name} (from {src})")
            )
            got = "a value (not shown: secret)" if s.secret else repr(merged[s.name])
            raise UserError(f"{where}: expected {complaint}, got {got}")
    if merged["bootstrap_token"] and not merged["control_plane"]:
        raise UserError(
            "bootstrap_token is set but control_plane is empty", hint="set both or neither"
        )
    if bool(merged["tls_cert"]) != bool(merged["tls_key"]):
        raise UserError("tls_cert and tls_key go together", hint="set both (mTLS) or neither")
    if merged["tls_cert"] and not merged["tls_ca"]:
        raise UserError(
            "tls_cert is set but tls_ca is empty",
            hint="a client certificate is only sent over TLS: set tls_ca to verify the server",
        )
    if bool(merged["otlp_tls_cert"]) != bool(merged["otlp_tls_key"]):
        raise UserError("otlp_tls_cert and otlp_tls_key go together", hint="set both or neither")
    if merged["otlp_endpoints"] and importlib.util.find_spec("opentelemetry.proto") is None:
        raise UserError(
            "otlp_endpoints is set but this installation has no opentelemetry-proto",
            hint="install the agent with its dependencies, or leave otlp_endpoints empty",
        )
    merged["otlp_endpoints"] = tuple(merged["otlp_endpoints"])
    merged["interfaces"] = tuple(merged["interfaces"])
    merged["features"] = tuple(merged["features"])
    if len(set(merged["interfaces"])) != len(merged["interfaces"]):
        raise UserError(f"interfaces lists a name twice: {list(merged['interfaces'])}")
    return AgentConfig(**merged)


def describe() -> str:
    """The settings table as text, for `sennet-agent config --help` and the docs."""
    lines = ["key                  type   default               description"]
    for s in SETTINGS:
        default = "" if s.secret else repr(s.default if s.kind != "path" else str(s.default))
        if len(default) > 20:
            default = default[:17] + "..."
        env = ENV_PREFIX + s.name.upper()
        lines.append(f"{s.name:<20} {s.kind:<6} {default:<21} {s.help} (env {env})")
    return "\n".join(lines)

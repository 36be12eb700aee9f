"""Semantic checks on decoded requests: every rejection names the offending field.

Protobuf decoding proves only the wire shape. These checks keep absurd values
out of the store (SQLite integers are signed 64-bit; a uint64 past 2^63-1 is
not a counter, it is corruption) and keep label values bounded and safe for
the Prometheus exposition.

Event kinds are a closed set: the agent's `EventKind` labels, which mirror the
kernel's SENNET_EV_* numbers. proto/ carries a kind as a free string, so the
set is written once here (the control plane must not import agent code) and a
test checks it equals the agent's. An unknown kind would otherwise create new
series and label values at the client's whim.

Some refusals need the agent's stored state (a total that would pass 2^63-1,
too many series); `fleet.py` detects them inside the writer's transaction and
`stateful_refusal` turns them into the same kind of field-naming error.
"""

from __future__ import annotations

import math
import re
import socket
import uuid
from collections.abc import Mapping

from sennet.controlplane import fleet_insights, image_report, validate_insights
from sennet.controlplane.fleet import (
    AGENT_DROPPED,
    EVENTS,
    INTERFACE_FIELDS,
    MAX_TOTAL,
    RINGBUF_DROPS,
    SeriesKey,
    TooManySeries,
    TotalOverflow,
)
from sennet.controlplane.refusals import RequestError, invalid
from sennet.controlplane.validate_insights import DEFAULT_LIMITS, Limits
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

MAX_INTERFACES = 64
MAX_KINDS = 32
MAX_EVENTS = 1024
MAX_COUNTER = (1 << 63) - 1
MAX_UPTIME_S = 100 * 365 * 86400.0
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,15}$")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_TEXT_LIMIT = 253
_STREAM_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# the canonical form `agent_id` requires: str(uuid.UUID(x)) == x holds for exactly these
_CANONICAL_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")  # what `_text` refuses: ord < 32 or 127
EVENT_KINDS = frozenset(
    {
        "large_packet",
        "tcp_null",
        "tcp_syn_fin",
        "tcp_syn_rst",
        "tcp_xmas",
        "land",
        "ipv4_bad_ihl",
        "ipv4_bad_len",
        "truncated_l3",
        "truncated_l4",
    }
)
_KINDS_TEXT = ", ".join(sorted(EVENT_KINDS))


def _known_kind(kind: str, field: str) -> None:
    if kind not in EVENT_KINDS:
        raise invalid(
            field,
            f"{kind!r} is not a known event kind (one of {_KINDS_TEXT})",
            "unknown_event_kind",
        )


def agent_id(value: str, field: str = "agent_id") -> str:
    """A canonical lower-case UUID string."""
    if not value:
        raise invalid(field, "is required")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise invalid(field, f"{value[:64]!r} is not a UUID") from None
    if str(parsed) != value:
        raise invalid(field, f"{value[:64]!r} is not in canonical form (want {parsed})")
    return value


def _text(value: str, field: str) -> None:
    if len(value) > _TEXT_LIMIT:
        raise invalid(field, f"is {len(value)} characters, at most {_TEXT_LIMIT} allowed")
    if _CONTROL_RE.search(value):
        raise invalid(field, "contains control characters")


def _counter(value: int, field: str) -> None:
    if value > MAX_COUNTER:
        raise invalid(field, f"{value} exceeds {MAX_COUNTER} (2^63-1); not a plausible counter")


def _small(value: int, field: str, limit: int) -> None:
    if value > limit:
        raise invalid(field, f"{value} is out of range 0..{limit}")


def _kind_map(counts: Mapping[str, int], field: str) -> None:
    # a comprehension: `dict()` of a protobuf map walks it through the Mapping ABC's
    # Python-level KeysView, 4 us per map against 1 us (two maps per heartbeat)
    items = {kind: counts[kind] for kind in counts}
    if len(items) > MAX_KINDS:
        raise invalid(field, f"has {len(items)} kinds, at most {MAX_KINDS} allowed")
    # known kinds all match _KIND_RE: only a map with a bad entry needs the named checks
    if EVENT_KINDS.issuperset(items) and max(items.values(), default=0) <= MAX_COUNTER:
        return
    for kind, count in items.items():
        if not _KIND_RE.match(kind):
            raise invalid(f"{field}[{kind[:40]!r}]", "kind must match [a-z][a-z0-9_]{0,31}")
        _counter(count, f"{field}[{kind!r}]")
        _known_kind(kind, f"{field}[{kind!r}]")


def _address(value: str, field: str, ip_version: int) -> None:
    # inet_pton is C and strict; ipaddress costs ~10x more per event at fleet rates
    if not value:
        return
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        try:
            socket.inet_pton(family, value)
        except OSError:
            continue
        if ip_version and version != ip_version:
            raise invalid(field, f"is IPv{version} but ip_version is {ip_version}")
        return
    raise invalid(field, f"{value[:64]!r} is not an IP address")


def _address_ok(value: str, ip_version: int) -> bool:
    """`_address` as a yes/no, for the fast path of `_event`."""
    if not value:
        return True
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        try:
            socket.inet_pton(family, value)
        except OSError:
            continue
        return not ip_version or version == ip_version
    return False


_DIRECTIONS = (pb.DIRECTION_RX, pb.DIRECTION_TX)


def _event(ev: pb.Event, field: str) -> None:
    """`_event_named` for a good event without spelling out a field name per check.

    The checks are the same; only when one fails does the named version run,
    which raises the error it always did (heartbeats carry up to 1024 events).
    """
    if not _event_ok(ev):
        _event_named(ev, field)


def _event_ok(ev: pb.Event) -> bool:
    return (
        0 < ev.ts_unix_ns <= MAX_COUNTER
        and ev.seq <= MAX_COUNTER
        and ev.direction in _DIRECTIONS
        and ev.kind in EVENT_KINDS  # every known kind matches _KIND_RE
        and ev.pkt_len <= 1 << 20
        and ev.ip_version in (0, 4, 6)
        and ev.l4_proto <= 255
        and ev.src_port <= 65535
        and ev.dst_port <= 65535
        and ev.tcp_flags <= 255
        and ev.vlan_tags <= 2
        and ev.eth_proto <= 65535
        and _address_ok(ev.src_addr, ev.ip_version)
        and _address_ok(ev.dst_addr, ev.ip_version)
    )


def _event_named(ev: pb.Event, field: str) -> None:
    if ev.ts_unix_ns == 0:
        raise invalid(f"{field}.ts_unix_ns", "is required")
    _counter(ev.ts_unix_ns, f"{field}.ts_unix_ns")
    _counter(ev.seq, f"{field}.seq")
    if ev.direction not in (pb.DIRECTION_RX, pb.DIRECTION_TX):
        raise invalid(f"{field}.direction", "must be DIRECTION_RX or DIRECTION_TX")
    if not _KIND_RE.match(ev.kind):
        raise invalid(f"{field}.kind", "is required and must match [a-z][a-z0-9_]{0,31}")
    _known_kind(ev.kind, f"{field}.kind")
    _small(ev.pkt_len, f"{field}.pkt_len", 1 << 20)
    if ev.ip_version not in (0, 4, 6):
        raise invalid(f"{field}.ip_version", f"{ev.ip_version} is not 0, 4 or 6")
    _small(ev.l4_proto, f"{field}.l4_proto", 255)
    _small(ev.src_port, f"{field}.src_port", 65535)
    _small(ev.dst_port, f"{field}.dst_port", 65535)
    _small(ev.tcp_flags, f"{field}.tcp_flags", 255)
    _small(ev.vlan_tags, f"{field}.vlan_tags", 2)
    _small(ev.eth_proto, f"{field}.eth_proto", 65535)
    _address(ev.src_addr, f"{field}.src_addr", ev.ip_version)
    _address(ev.dst_addr, f"{field}.dst_addr", ev.ip_version)


def register(req: pb.RegisterRequest) -> None:
    """Reject a RegisterRequest that could not describe a real agent."""
    agent_id(req.agent_id)
    _text(req.hostname, "hostname")
    _text(req.agent_version, "agent_version")
    _text(req.kernel_version, "kernel_version")


def heartbeat(req: pb.HeartbeatRequest, limits: Limits = DEFAULT_LIMITS) -> None:
    """Reject a HeartbeatRequest with missing fields or absurd values, naming the field.

    `limits` caps the top lists of the flow and DNS parts (validate_insights.py).
    The plain part is checked in one pass first (`_plain_ok`); only a heartbeat
    it doubts goes through the named checks, which raise the error they always did.
    """
    if not _plain_ok(req):
        _plain_named(req)
    validate_insights.heartbeat_parts(req, limits)
    image_report.check(req)


def _plain_ok(req: pb.HeartbeatRequest) -> bool:
    """Every check of `_plain_named` as one yes/no, no field name formatted per check.

    It may doubt a heartbeat the named checks pass (they then decide), never
    pass one they refuse: `test_validation_plain_one_pass.py` holds it to that.
    """
    if not (
        _CANONICAL_UUID_RE.fullmatch(req.agent_id)  # what `agent_id` accepts, exactly
        and len(req.agent_version) <= _TEXT_LIMIT
        and not _CONTROL_RE.search(req.agent_version)
        and len(req.kernel_version) <= _TEXT_LIMIT
        and not _CONTROL_RE.search(req.kernel_version)
        and math.isfinite(req.uptime_seconds)
        and 0 <= req.uptime_seconds <= MAX_UPTIME_S
        and len(req.interfaces) <= MAX_INTERFACES
        and _kinds_ok(req.events_by_kind)
        and _kinds_ok(req.ringbuf_drops_by_kind)
        and len(req.recent_events) <= MAX_EVENTS
        and (not req.event_stream or _STREAM_RE.match(req.event_stream))
        and req.events_dropped_by_agent <= MAX_COUNTER
    ):
        return False
    seen: set[str] = set()
    for itf in req.interfaces:
        if (
            not _IFNAME_RE.match(itf.name)
            or itf.name in seen
            or itf.ifindex == 0
            or max(itf.rx_packets, itf.rx_bytes, itf.tx_packets, itf.tx_bytes) > MAX_COUNTER
        ):
            return False
        seen.add(itf.name)
    stream, last_seq = bool(req.event_stream), 0
    for ev in req.recent_events:
        if not _event_ok(ev) or (stream and ev.seq <= last_seq):
            return False
        last_seq = ev.seq
    return True


def _kinds_ok(counts: Mapping[str, int]) -> bool:
    items = {kind: counts[kind] for kind in counts}
    return (
        len(items) <= MAX_KINDS
        and EVENT_KINDS.issuperset(items)
        and max(items.values(), default=0) <= MAX_COUNTER
    )


def _plain_named(req: pb.HeartbeatRequest) -> None:
    """The interfaces, event counts and events, each check naming its field."""
    agent_id(req.agent_id)
    _text(req.agent_version, "agent_version")
    _text(req.kernel_version, "kernel_version")
    if not math.isfinite(req.uptime_seconds) or not 0 <= req.uptime_seconds <= MAX_UPTIME_S:
        raise invalid("uptime_seconds", f"{req.uptime_seconds} is not in 0..{MAX_UPTIME_S:.0f}")
    if len(req.interfaces) > MAX_INTERFACES:
        n = len(req.interfaces)
        raise invalid("interfaces", f"has {n} entries, at most {MAX_INTERFACES} allowed")
    seen: set[str] = set()
    for i, itf in enumerate(req.interfaces):
        field = f"interfaces[{i}]"
        if not _IFNAME_RE.match(itf.name):
            raise invalid(f"{field}.name", f"{itf.name[:40]!r} is not an interface name")
        if itf.name in seen:
            raise invalid(f"{field}.name", f"{itf.name!r} appears twice")
        seen.add(itf.name)
        if itf.ifindex == 0:
            raise invalid(f"{field}.ifindex", "is required (ifindex 0 does not exist)")
        if max(itf.rx_packets, itf.rx_bytes, itf.tx_packets, itf.tx_bytes) > MAX_COUNTER:
            for name in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"):
                _counter(getattr(itf, name), f"{field}.{name}")
    _kind_map(req.events_by_kind, "events_by_kind")
    _kind_map(req.ringbuf_drops_by_kind, "ringbuf_drops_by_kind")
    if len(req.recent_events) > MAX_EVENTS:
        n = len(req.recent_events)
        raise invalid("recent_events", f"has {n} entries, at most {MAX_EVENTS} allowed")
    if req.event_stream and not _STREAM_RE.match(req.event_stream):
        raise invalid("event_stream", "must be 1-64 characters of [A-Za-z0-9_-]")
    last_seq = 0
    for i, ev in enumerate(req.recent_events):
        _event(ev, f"recent_events[{i}]")
        if req.event_stream:
            if ev.seq <= last_seq:
                raise invalid(
                    f"recent_events[{i}].seq",
                    f"{ev.seq} does not increase (after "
                    f"{last_seq}); events in a stream are numbered from 1 up",
                )
            last_seq = ev.seq
    _counter(req.events_dropped_by_agent, "events_dropped_by_agent")


def series_field(req: pb.HeartbeatRequest, key: SeriesKey) -> str:
    """The request field that carries `key`'s reading, e.g. `interfaces[0].rx_packets`."""
    if key.family in INTERFACE_FIELDS:
        for i, itf in enumerate(req.interfaces):
            if itf.name == key.name:
                return f"interfaces[{i}].{key.family}"
    elif key.family == EVENTS:
        return f"events_by_kind[{key.name!r}]"
    elif key.family == RINGBUF_DROPS:
        return f"ringbuf_drops_by_kind[{key.name!r}]"
    elif key.family == AGENT_DROPPED:
        return "events_dropped_by_agent"
    elif key.family in fleet_insights.FAMILIES:
        return validate_insights.series_field(req, key.family, key.name) or key.stored()
    return key.stored()


def stateful_refusal(req: pb.HeartbeatRequest, exc: TotalOverflow | TooManySeries) -> RequestError:
    """INVALID_ARGUMENT for a heartbeat the agent's stored state cannot take, naming the field."""
    field = series_field(req, exc.key)
    if isinstance(exc, TotalOverflow):
        return invalid(
            field,
            f"{exc.raw} would take the stored total ({exc.total}) past {MAX_TOTAL} (2^63-1, "
            "the store's integer limit); totals never wrap, so this heartbeat is refused",
            "counter_overflow",
        )
    return invalid(
        field,
        f"would be this agent's series number {exc.count}, at most {exc.limit} allowed "
        "(max_series_per_agent)",
        "too_many_series",
    )

"""Checks on a heartbeat's flow, microburst, DNS and TCP parts; every refusal names the field.

Kept beside `validate.py` (which calls `heartbeat_parts`) so each stays small.
What they keep out: lists past the control plane's caps (top talkers and top
names become labelled series, so the caps bound /metrics cardinality per
agent), names past 255 characters or with control characters, label sets
that are not closed (rcodes, reset directions, microburst windows), histograms
Prometheus could not represent (bounds not strictly increasing, counts not one
more than bounds, a negative or non-finite sum) and counters SQLite cannot
hold. Counters that go backwards are not refused: `fleet.advance` treats them
as resets, exactly as for the interface counters.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sennet.common.prom_histogram import le_labels
from sennet.controlplane import fleet_insights as fi
from sennet.controlplane.refusals import invalid
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

MAX_COUNTER = (1 << 63) - 1
MAX_BOUNDS = 64
MAX_QTYPES = 32
MAX_BURSTS = 256  # 64 interfaces x 2 directions x 2 windows
MAX_NAME = 255
RCODES = frozenset({"NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "other"})
DIRECTIONS = frozenset({"rx", "tx"})
WINDOWS_MS = frozenset({1, 10})
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,15}$")
_QTYPE_RE = re.compile(r"^[A-Za-z0-9]{1,16}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")  # what `_names` refuses: ord < 32 or 127
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


@dataclass(frozen=True)
class Limits:
    """The configured caps (settings `max_talkers`, `max_dns_names`)."""

    max_talkers: int = 100
    max_dns_names: int = 100


DEFAULT_LIMITS = Limits()  # the settings' defaults (frozen, so safe to share)


def _counter(value: int, field: str) -> None:
    if value > MAX_COUNTER:
        raise invalid(field, f"{value} exceeds {MAX_COUNTER} (2^63-1); not a plausible counter")


def _small(value: int, field: str, limit: int) -> None:
    if value > limit:
        raise invalid(field, f"{value} is out of range 0..{limit}")


def _ifname(value: str, field: str) -> None:
    if not _IFNAME_RE.match(value):
        raise invalid(field, f"{value[:40]!r} is not an interface name")


def _direction(value: int, field: str) -> None:
    if value not in fi.DIRECTION:
        raise invalid(field, "must be DIRECTION_RX or DIRECTION_TX")


def _address(value: str, field: str, ip_version: int) -> None:
    family = socket.AF_INET if ip_version == 4 else socket.AF_INET6
    try:
        socket.inet_pton(family, value)
    except OSError:
        raise invalid(field, f"{value[:64]!r} is not an IPv{ip_version} address") from None


def _most(items: int, field: str, limit: int, setting: str = "") -> None:
    if items > limit:
        why = f" ({setting})" if setting else ""
        raise invalid(field, f"has {items} entries, at most {limit} allowed{why}")


_GOOD_BOUNDS: set[tuple[float, ...]] = set()  # bound lists that passed `_bounds`


def _bounds(bounds: tuple[float, ...], field: str) -> None:
    _most(len(bounds), f"{field}.bounds_seconds", MAX_BOUNDS)
    last = 0.0
    for i, b in enumerate(bounds):
        if not math.isfinite(b) or b <= last:
            raise invalid(
                f"{field}.bounds_seconds[{i}]",
                f"{b} is not finite, positive and above the previous bound ({last})",
            )
        last = b


def histogram(h: pb.LatencyHistogram, field: str) -> None:
    """Bounds finite, positive, strictly increasing; one more count than bounds; a sane sum."""
    bounds = tuple(h.bounds_seconds)
    if bounds not in _GOOD_BOUNDS:  # a fleet sends the same few bound lists every heartbeat
        _bounds(bounds, field)
        if len(_GOOD_BOUNDS) >= 64:
            _GOOD_BOUNDS.clear()
        _GOOD_BOUNDS.add(bounds)
    if len(h.counts) != len(bounds) + 1:
        raise invalid(
            f"{field}.counts",
            f"has {len(h.counts)} entries for {len(bounds)} bounds; want bounds + 1 "
            "(the last bucket is above the last bound)",
        )
    if max(h.counts) > MAX_COUNTER:  # field names are only spelled out for the offender
        for i, c in enumerate(h.counts):
            _counter(c, f"{field}.counts[{i}]")
    s = h.sum_seconds
    if not math.isfinite(s) or s < 0 or s * 1e9 > MAX_COUNTER:
        raise invalid(f"{field}.sum_seconds", f"{s} is not a finite sum in 0..{MAX_COUNTER}e-9")


def _talker(t: pb.Talker, field: str) -> None:
    _ifname(t.interface, f"{field}.interface")
    _direction(t.direction, f"{field}.direction")
    if t.ip_version not in (4, 6):
        raise invalid(f"{field}.ip_version", f"{t.ip_version} is not 4 or 6")
    _small(t.l4_proto, f"{field}.l4_proto", 255)
    _address(t.src_addr, f"{field}.src_addr", t.ip_version)
    _address(t.dst_addr, f"{field}.dst_addr", t.ip_version)
    _small(t.src_port, f"{field}.src_port", 65535)
    _small(t.dst_port, f"{field}.dst_port", 65535)
    _small(t.vlan_id, f"{field}.vlan_id", 4095)
    _small(t.tcp_flags, f"{field}.tcp_flags", 255)
    _counter(t.packets, f"{field}.packets")
    _counter(t.bytes, f"{field}.bytes")


def _flows(f: pb.FlowSummary, limits: Limits) -> None:
    for name in (
        "active",
        "created_total",
        "ended_total",
        "lost_total",
        "evicted_total",
        "capacity",
    ):
        _counter(getattr(f, name), f"flows.{name}")
    if f.capacity and f.active > f.capacity:
        raise invalid("flows.active", f"{f.active} flows in a table of {f.capacity}")
    _most(len(f.top_talkers), "flows.top_talkers", limits.max_talkers, "max_talkers")
    for i, t in enumerate(f.top_talkers):
        _talker(t, f"flows.top_talkers[{i}]")


def _microbursts(bursts: list[pb.Microburst]) -> None:
    _most(len(bursts), "microbursts", MAX_BURSTS)
    seen: set[tuple[str, int, int]] = set()
    for i, m in enumerate(bursts):
        field = f"microbursts[{i}]"
        _ifname(m.interface, f"{field}.interface")
        _direction(m.direction, f"{field}.direction")
        if m.window_ms not in WINDOWS_MS:
            raise invalid(f"{field}.window_ms", f"{m.window_ms} is not 1 or 10")
        key = (m.interface, m.direction, m.window_ms)
        if key in seen:
            raise invalid(field, "repeats an interface, direction and window")
        seen.add(key)
        _counter(m.max_packets, f"{field}.max_packets")
        _counter(m.max_bytes, f"{field}.max_bytes")


def _names(names: list[pb.NameCount], field: str, limits: Limits) -> None:
    _most(len(names), field, limits.max_dns_names, "max_dns_names")
    for i, n in enumerate(names):
        if not 0 < len(n.name) <= MAX_NAME:
            raise invalid(f"{field}[{i}].name", f"is {len(n.name)} characters, want 1..{MAX_NAME}")
        if _CONTROL_RE.search(n.name):
            raise invalid(f"{field}[{i}].name", "contains control characters")
        _counter(n.count, f"{field}[{i}].count")


def _map(counts: Mapping[str, int], field: str, allowed: frozenset[str] | None) -> None:
    _most(len(counts), field, MAX_QTYPES)
    for key, value in counts.items():
        if allowed is not None and key not in allowed:
            raise invalid(f"{field}[{key[:40]!r}]", f"is not one of {', '.join(sorted(allowed))}")
        if allowed is None and not _QTYPE_RE.match(key):
            raise invalid(f"{field}[{key[:40]!r}]", "a query type must match [A-Za-z0-9]{1,16}")
        _counter(value, f"{field}[{key!r}]")


def _dns(d: pb.DnsSummary, limits: Limits) -> None:
    _map(d.queries_by_type, "dns.queries_by_type", None)
    _map(d.responses_by_rcode, "dns.responses_by_rcode", RCODES)
    if d.HasField("latency"):
        histogram(d.latency, "dns.latency")
    _counter(d.unanswered_total, "dns.unanswered_total")
    _counter(d.malformed_total, "dns.malformed_total")
    _names(list(d.top_queried), "dns.top_queried", limits)
    _names(list(d.top_failing), "dns.top_failing", limits)


def _tcp(t: pb.TcpSummary) -> None:
    for name in ("syn_rtt", "synack_rtt"):
        if t.HasField(name):
            histogram(getattr(t, name), f"tcp.{name}")
    _map(t.resets_by_direction, "tcp.resets_by_direction", DIRECTIONS)
    for name in fi.TCP_COUNTERS.values():
        _counter(getattr(t, name), f"tcp.{name}")


def heartbeat_parts(req: pb.HeartbeatRequest, limits: Limits) -> None:
    """Refuse the flow, microburst, DNS and TCP parts a real agent could not have sent.

    A heartbeat that passes every check goes through `_parts_ok` alone: the same
    checks in one pass, without spelling out a field name per check. Only when
    it says no do the named checks run, which raise the error they always did.
    """
    if _parts_ok(req, limits):
        return
    if req.HasField("flows"):
        _flows(req.flows, limits)
    _microbursts(list(req.microbursts))
    if req.HasField("dns"):
        _dns(req.dns, limits)
    if req.HasField("tcp"):
        _tcp(req.tcp)


def _parts_ok(req: pb.HeartbeatRequest, limits: Limits) -> bool:
    """True if the named checks below would all pass (never True when one would fail)."""
    if req.HasField("flows"):
        f = req.flows
        if (
            max(f.active, f.created_total, f.ended_total, f.lost_total, f.evicted_total, f.capacity)
            > MAX_COUNTER
            or (f.capacity and f.active > f.capacity)
            or len(f.top_talkers) > limits.max_talkers
        ):
            return False
        for t in f.top_talkers:
            if not (
                _IFNAME_RE.match(t.interface)
                and t.direction in fi.DIRECTION
                and t.ip_version in _FAMILY
                and t.l4_proto <= 255
                and t.src_port <= 65535
                and t.dst_port <= 65535
                and t.vlan_id <= 4095
                and t.tcp_flags <= 255
                and t.packets <= MAX_COUNTER
                and t.bytes <= MAX_COUNTER
                and _address_ok(t.src_addr, t.ip_version)
                and _address_ok(t.dst_addr, t.ip_version)
            ):
                return False
    bursts = req.microbursts
    if bursts:
        if len(bursts) > MAX_BURSTS:
            return False
        seen: set[tuple[str, int, int]] = set()
        for m in bursts:
            if not (
                _IFNAME_RE.match(m.interface)
                and m.direction in fi.DIRECTION
                and m.window_ms in WINDOWS_MS
                and m.max_packets <= MAX_COUNTER
                and m.max_bytes <= MAX_COUNTER
            ):
                return False
            seen.add((m.interface, m.direction, m.window_ms))
        if len(seen) != len(bursts):
            return False
    if req.HasField("dns"):
        d = req.dns
        qtypes = d.queries_by_type
        rcodes = d.responses_by_rcode
        if not (
            _map_ok(qtypes)
            and all(_QTYPE_RE.match(k) for k in qtypes)
            and _map_ok(rcodes)
            and RCODES.issuperset(rcodes)
            and max(d.unanswered_total, d.malformed_total) <= MAX_COUNTER
            and _names_ok(d.top_queried, limits)
            and _names_ok(d.top_failing, limits)
        ):
            return False
        if d.HasField("latency"):
            histogram(d.latency, "dns.latency")  # raises by name; cheap for a known bound list
    if req.HasField("tcp"):
        tcp = req.tcp
        resets = tcp.resets_by_direction
        if not (
            _map_ok(resets)
            and DIRECTIONS.issuperset(resets)
            and max(
                tcp.attempts_unanswered_total,
                tcp.retransmits_total,
                tcp.zero_windows_total,
                tcp.malformed_total,
            )
            <= MAX_COUNTER
        ):
            return False
        for name in ("syn_rtt", "synack_rtt"):
            if tcp.HasField(name):
                histogram(getattr(tcp, name), f"tcp.{name}")
    return True


def _map_ok(counts: Mapping[str, int]) -> bool:
    return len(counts) <= MAX_QTYPES and max(counts.values(), default=0) <= MAX_COUNTER


def _names_ok(names: Sequence[pb.NameCount], limits: Limits) -> bool:
    if len(names) > limits.max_dns_names:
        return False
    for n in names:
        name = n.name
        if not 0 < len(name) <= MAX_NAME or n.count > MAX_COUNTER or _CONTROL_RE.search(name):
            return False
    return True


def _address_ok(value: str, ip_version: int) -> bool:
    try:
        socket.inet_pton(_FAMILY[ip_version], value)
    except OSError:
        return False
    return True


def series_field(req: pb.HeartbeatRequest, family: str, name: str) -> str | None:
    """The request field of one of `fleet_insights`' counter series, for a stateful refusal."""
    fields = {**fi.FLOW_COUNTERS}
    if family in fields:
        return f"flows.{fields[family]}"
    for summary, counters, maps in (
        ("dns", fi.DNS_COUNTERS, fi.DNS_MAPS),
        ("tcp", fi.TCP_COUNTERS, fi.TCP_MAPS),
    ):
        if family in counters:
            return f"{summary}.{counters[family]}"
        if family in maps:
            return f"{summary}.{maps[family]}[{name!r}]"
    base = family.removesuffix(fi.SUM)
    if base in fi.HISTOGRAMS:
        summary, field = fi.HISTOGRAMS[base]
        if family != base:
            return f"{summary}.{field}.sum_seconds"
        h = getattr(getattr(req, summary), field)
        les = le_labels(h.bounds_seconds)
        return f"{summary}.{field}.counts[{les.index(name)}]" if name in les else None
    return None

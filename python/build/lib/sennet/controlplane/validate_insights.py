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
from collections.abc import Mapping
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


def histogram(h: pb.LatencyHistogram, field: str) -> None:
    """Bounds finite, positive, strictly increasing; one more count than bounds; a sane sum."""
    bounds = list(h.bounds_seconds)
    _most(len(bounds), f"{field}.bounds_seconds", MAX_BOUNDS)
    last = 0.0
    for i, b in enumerate(bounds):
        if not math.isfinite(b) or b <= last:
            raise invalid(
                f"{field}.bounds_seconds[{i}]",
                f"{b} is not finite, positive and above the previous bound ({last})",
            )
        last = b
    if len(h.counts) != len(bounds) + 1:
        raise invalid(
            f"{field}.counts",
            f"has {len(h.counts)} entries for {len(bounds)} bounds; want bounds + 1 "
            "(the last bucket is above the last bound)",
        )
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
        if any(ord(c) < 32 or ord(c) == 127 for c in n.name):
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
    """Refuse the flow, microburst, DNS and TCP parts a real agent could not have sent."""
    if req.HasField("flows"):
        _flows(req.flows, limits)
    _microbursts(list(req.microbursts))
    if req.HasField("dns"):
        _dns(req.dns, limits)
    if req.HasField("tcp"):
        _tcp(req.tcp)


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

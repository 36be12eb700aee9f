"""Snapshot -> HeartbeatRequest: what the control plane receives, field by field.

Kept apart from the sender so the mapping can be read (and tested) on its own,
and so the sender module is only about delivery: queueing, retries, enrolment.
"""

from __future__ import annotations

from collections.abc import Iterable

from sennet.agent.image_state import ImageIdentity, UpdateOutcome
from sennet.agent.snapshot import Event, Snapshot
from sennet.agent.telemetry import (
    DnsReport,
    FlowReport,
    LatencyHistogram,
    Microburst,
    NameCount,
    Talker,
    TcpReport,
)
from sennet.proto.contract import HEARTBEAT
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

_DIRECTION = {"rx": pb.DIRECTION_RX, "tx": pb.DIRECTION_TX}


def event_to_proto(ev: Event, mono_to_unix_ns: int) -> pb.Event:
    """Convert a decoded ring-buffer event; kernel monotonic time becomes wall-clock time."""
    return pb.Event(
        ts_unix_ns=ev.ts_ns + mono_to_unix_ns,
        ifindex=ev.ifindex,
        direction=_DIRECTION[ev.direction.label],
        kind=ev.kind.label,
        pkt_len=ev.pkt_len,
        ip_version=ev.ip_version,
        l4_proto=ev.l4_proto,
        src_port=ev.sport,
        dst_port=ev.dport,
        src_addr=ev.saddr or "",
        dst_addr=ev.daddr or "",
        tcp_flags=ev.tcp_flags,
        vlan_tags=ev.vlan_tags,
        eth_proto=ev.eth_proto,
    )


def snapshot_to_request(
    agent_id: str, snap: Snapshot, events: list[pb.Event], dropped: int, stream: str = ""
) -> pb.HeartbeatRequest:
    """The HeartbeatRequest for a snapshot plus a batch of queued events."""
    return HEARTBEAT.request(
        agent_id=agent_id,
        agent_version=snap.agent_version,
        kernel_version=snap.kernel_version,
        uptime_seconds=snap.uptime_s,
        interfaces=[
            pb.InterfaceCounters(
                name=c.ifname,
                ifindex=c.ifindex,
                rx_packets=c.rx_packets,
                rx_bytes=c.rx_bytes,
                tx_packets=c.tx_packets,
                tx_bytes=c.tx_bytes,
            )
            for c in snap.interfaces
        ],
        events_by_kind=snap.events_by_kind,
        ringbuf_drops_by_kind=snap.ringbuf_drops_by_kind,
        recent_events=events,
        events_dropped_by_agent=dropped,
        event_stream=stream,
        flows=flows_to_proto(snap.flows) if snap.flows is not None else None,
        microbursts=[microburst_to_proto(m) for m in snap.microbursts],
        dns=dns_to_proto(snap.dns) if snap.dns is not None else None,
        tcp=tcp_to_proto(snap.tcp) if snap.tcp is not None else None,
        image=image_to_proto(snap.image_state.image),
        last_update=outcome_to_proto(snap.image_state.last_update),
    )


def image_to_proto(i: ImageIdentity | None) -> pb.ImageIdentity | None:
    """The booted image; None (field unset) on a host that is not an appliance."""
    return None if i is None else pb.ImageIdentity(version=i.version, digest=i.digest, slot=i.slot)


def outcome_to_proto(o: UpdateOutcome | None) -> pb.UpdateOutcome | None:
    """The updater's last outcome; None (field unset) before the first update."""
    if o is None:
        return None
    return pb.UpdateOutcome(
        result=o.result,
        reason=o.reason,
        from_version=o.from_version,
        to_version=o.to_version,
        at_unix=o.at_unix,
    )


def histogram_to_proto(h: LatencyHistogram) -> pb.LatencyHistogram:
    """Bounds and per-bucket counts as the data plane keeps them (not cumulative)."""
    return pb.LatencyHistogram(bounds_seconds=h.bounds_s, counts=h.counts, sum_seconds=h.sum_s)


def talker_to_proto(t: Talker) -> pb.Talker:
    return pb.Talker(
        interface=t.ifname,
        direction=_DIRECTION[t.direction],
        ip_version=t.ip_version,
        l4_proto=t.l4_proto,
        src_addr=t.saddr,
        dst_addr=t.daddr,
        src_port=t.sport,
        dst_port=t.dport,
        vlan_id=t.vlan_id,
        packets=t.packets,
        bytes=t.bytes,
        tcp_flags=t.tcp_flags,
    )


def flows_to_proto(f: FlowReport) -> pb.FlowSummary:
    return pb.FlowSummary(
        active=f.active,
        created_total=f.created_total,
        ended_total=f.ended_total,
        lost_total=f.lost_total,
        evicted_total=f.evicted_total,
        capacity=f.capacity,
        top_talkers=[talker_to_proto(t) for t in f.top_talkers],
    )


def microburst_to_proto(m: Microburst) -> pb.Microburst:
    return pb.Microburst(
        interface=m.ifname,
        direction=_DIRECTION[m.direction],
        window_ms=m.window_ms,
        max_packets=m.max_packets,
        max_bytes=m.max_bytes,
    )


def _names(names: Iterable[NameCount]) -> list[pb.NameCount]:
    return [pb.NameCount(name=n.name, count=n.count) for n in names]


def dns_to_proto(d: DnsReport) -> pb.DnsSummary:
    return pb.DnsSummary(
        queries_by_type=d.queries_by_type,
        responses_by_rcode=d.responses_by_rcode,
        latency=histogram_to_proto(d.latency),
        unanswered_total=d.unanswered_total,
        malformed_total=d.malformed_total,
        top_queried=_names(d.top_queried),
        top_failing=_names(d.top_failing),
    )


def tcp_to_proto(t: TcpReport) -> pb.TcpSummary:
    return pb.TcpSummary(
        syn_rtt=histogram_to_proto(t.syn_rtt),
        synack_rtt=histogram_to_proto(t.synack_rtt),
        attempts_unanswered_total=t.attempts_unanswered_total,
        resets_by_direction=t.resets_by_direction,
        retransmits_total=t.retransmits_total,
        zero_windows_total=t.zero_windows_total,
        malformed_total=t.malformed_total,
    )

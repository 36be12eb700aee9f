"""Snapshot -> HeartbeatRequest: what the control plane receives, field by field.

Kept apart from the sender so the mapping can be read (and tested) on its own,
and so the sender module is only about delivery: queueing, retries, enrolment.
"""

from __future__ import annotations

from sennet.agent.snapshot import Event, Snapshot
from sennet.proto.contract import HEARTBEAT
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb


def event_to_proto(ev: Event, mono_to_unix_ns: int) -> pb.Event:
    """Convert a decoded ring-buffer event; kernel monotonic time becomes wall-clock time."""
    return pb.Event(
        ts_unix_ns=ev.ts_ns + mono_to_unix_ns,
        ifindex=ev.ifindex,
        direction=pb.DIRECTION_RX if ev.direction.label == "rx" else pb.DIRECTION_TX,
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
    )

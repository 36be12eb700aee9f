"""The heartbeat carries every report of the snapshot, field by field."""

from __future__ import annotations

from sennet.agent.sinks.heartbeat_message import snapshot_to_request
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.telemetry import LOG2_BOUNDS_S, TALKERS, full_snapshot

AGENT = "6f1c2a52-6d2e-4d8f-9a51-0b7b3c1d2e3f"


def test_a_snapshot_with_every_report_maps_onto_the_heartbeat_exactly() -> None:
    snap = full_snapshot()
    # through the wire format, as the control plane will see it
    req = pb.HeartbeatRequest.FromString(
        snapshot_to_request(AGENT, snap, [], 0).SerializeToString()
    )
    f = req.flows
    assert (
        f.active,
        f.created_total,
        f.ended_total,
        f.lost_total,
        f.evicted_total,
        f.capacity,
    ) == (37, 1000, 900, 63, 29, 65536)
    got = [
        (
            t.interface,
            t.direction,
            t.ip_version,
            t.l4_proto,
            t.src_addr,
            t.dst_addr,
            t.src_port,
            t.dst_port,
            t.vlan_id,
            t.packets,
            t.bytes,
            t.tcp_flags,
        )
        for t in f.top_talkers
    ]
    assert got == [
        ("eth1", pb.DIRECTION_RX, 4, 6, "10.0.0.1", "10.0.0.2", 40000, 443, 0, 120, 150_000, 27),
        ("eth1", pb.DIRECTION_TX, 6, 17, "fd00::1", "fd00::53", 5353, 53, 42, 9, 1_206, 0),
        ("eth2", pb.DIRECTION_RX, 4, 1, "192.0.2.7", "192.0.2.9", 0, 0, 0, 3, 294, 0),
    ]
    assert len(TALKERS) == 3
    assert [
        (m.interface, m.direction, m.window_ms, m.max_packets, m.max_bytes) for m in req.microbursts
    ] == [
        ("eth1", pb.DIRECTION_RX, 1, 17, 25_500),
        ("eth1", pb.DIRECTION_RX, 10, 90, 134_000),
        ("eth1", pb.DIRECTION_TX, 1, 4, 600),
        ("eth1", pb.DIRECTION_TX, 10, 12, 1_800),
    ]
    d = req.dns
    assert dict(d.queries_by_type) == {"A": 40, "AAAA": 30, "other": 2}
    assert dict(d.responses_by_rcode) == {
        "NOERROR": 60,
        "NXDOMAIN": 5,
        "SERVFAIL": 3,
        "REFUSED": 1,
        "other": 0,
    }
    assert (d.unanswered_total, d.malformed_total) == (4, 6)
    assert [(n.name, n.count) for n in d.top_queried] == [
        ("example.com", 25),
        ('we"ird\\name.test', 9),
    ]
    assert [(n.name, n.count) for n in d.top_failing] == [("missing.example", 5), (".", 1)]
    t = req.tcp
    assert (
        t.attempts_unanswered_total,
        dict(t.resets_by_direction),
        t.retransmits_total,
        t.zero_windows_total,
        t.malformed_total,
    ) == (8, {"rx": 3, "tx": 2}, 14, 1, 0)
    # histograms: the data plane's 27 bounds, 28 per-bucket counts, the sum to the nanosecond
    for h, seed in ((d.latency, 1), (t.syn_rtt, 2), (t.synack_rtt, 3)):
        assert tuple(h.bounds_seconds) == LOG2_BOUNDS_S
        want = [0] * 28
        want[seed % 5 + 8] = 3 * seed
        want[seed % 5 + 12] = seed + 1
        want[27] = 1
        assert list(h.counts) == want
        assert round(h.sum_seconds * 1e9) == 123_456_789 * seed + 7


def test_a_snapshot_without_reports_sends_none_of_the_new_fields() -> None:
    snap = full_snapshot()
    bare = type(snap)(
        agent_version=snap.agent_version,
        kernel_version=snap.kernel_version,
        uptime_s=snap.uptime_s,
        loader=snap.loader,
        interfaces=snap.interfaces,
        events_by_kind=snap.events_by_kind,
        ringbuf_drops_by_kind=snap.ringbuf_drops_by_kind,
        events_consumed=snap.events_consumed,
    )
    req = snapshot_to_request(AGENT, bare, [], 0)
    assert not req.HasField("flows") and not req.HasField("dns") and not req.HasField("tcp")
    assert len(req.microbursts) == 0

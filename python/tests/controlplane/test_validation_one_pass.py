"""The one-pass check of the flow, microburst, DNS and TCP parts agrees with the named checks.

`validate_insights.heartbeat_parts` first runs `_parts_ok` (every check, no
field names spelled out) and only on a "no" the named checks. These tests hold
it to that: a good heartbeat passes the one pass alone, and for every kind of
bad part the refusal is exactly the named checks' own (same message, same
field), whichever path found it first. In-process: the checks are pure.
"""

from __future__ import annotations

import uuid

import pytest

from sennet.controlplane import validate_insights as vi
from sennet.controlplane.refusals import RequestError
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.telemetry import full_request

LIMITS = vi.Limits(max_talkers=3, max_dns_names=2)  # the full request is at both caps
U64 = (1 << 63) + 5


def named(req: pb.HeartbeatRequest, limits: vi.Limits) -> None:
    """The named checks alone, in the order `heartbeat_parts` runs them."""
    if req.HasField("flows"):
        vi._flows(req.flows, limits)
    vi._microbursts(list(req.microbursts))
    if req.HasField("dns"):
        vi._dns(req.dns, limits)
    if req.HasField("tcp"):
        vi._tcp(req.tcp)


def _refusal(check: object, req: pb.HeartbeatRequest) -> str:
    with pytest.raises(RequestError) as err:
        check(req, LIMITS)  # type: ignore[operator]
    return str(err.value)


def _bad_cases() -> dict[str, pb.HeartbeatRequest]:
    """One request per kind of bad part, by a short name."""
    out: dict[str, pb.HeartbeatRequest] = {}

    def case(name: str) -> pb.HeartbeatRequest:
        out[name] = full_request(str(uuid.uuid4()))
        return out[name]

    case("too_many_talkers").flows.top_talkers.add(
        interface="eth1", direction=pb.DIRECTION_RX, ip_version=4, src_addr="1.1.1.1",
        dst_addr="2.2.2.2",
    )  # fmt: skip
    case("flow_counter").flows.lost_total = U64
    case("active_over_capacity").flows.active = 70_000
    case("talker_ifname").flows.top_talkers[0].interface = "bad name"
    case("talker_direction").flows.top_talkers[0].direction = pb.DIRECTION_UNSPECIFIED
    case("talker_ip_version").flows.top_talkers[0].ip_version = 5
    case("talker_l4_proto").flows.top_talkers[0].l4_proto = 256
    case("talker_port").flows.top_talkers[2].dst_port = 65536
    case("talker_vlan").flows.top_talkers[1].vlan_id = 4096
    case("talker_flags").flows.top_talkers[0].tcp_flags = 256
    case("talker_bytes").flows.top_talkers[0].bytes = U64
    case("talker_address_family").flows.top_talkers[1].src_addr = "10.0.0.1"
    case("talker_address").flows.top_talkers[0].dst_addr = "10.0.0.256"
    case("burst_window").microbursts[0].window_ms = 5
    case("burst_ifname").microbursts[1].interface = ""
    case("burst_counter").microbursts[2].max_bytes = U64
    req = case("burst_repeated")
    req.microbursts[1].window_ms = req.microbursts[0].window_ms
    case("qtype_key").dns.queries_by_type["A-B"] = 1
    case("qtype_count").dns.queries_by_type["A"] = U64
    case("rcode_key").dns.responses_by_rcode["BADRCODE"] = 1
    case("dns_counter").dns.unanswered_total = U64
    case("too_many_names").dns.top_queried.add(name="x.test", count=1)
    case("name_empty").dns.top_queried[0].name = ""
    case("name_long").dns.top_failing[0].name = "a" * 256
    case("name_control").dns.top_failing[1].name = "a\x7fb"
    case("name_count").dns.top_queried[1].count = U64
    case("histogram_counts").dns.latency.counts.pop()
    case("histogram_sum").tcp.synack_rtt.sum_seconds = -1.0
    req = case("histogram_and_name")  # two faults: the named order decides which is reported
    req.dns.latency.sum_seconds = -2.0
    req.dns.top_queried[0].name = ""
    case("reset_direction").tcp.resets_by_direction["up"] = 1
    case("tcp_counter").tcp.zero_windows_total = U64
    return out


def test_a_good_heartbeat_passes_the_one_pass_alone() -> None:
    req = full_request(str(uuid.uuid4()))
    assert vi._parts_ok(req, LIMITS) is True
    named(req, LIMITS)  # and the named checks agree
    vi.heartbeat_parts(req, LIMITS)


@pytest.mark.parametrize("name", sorted(_bad_cases()))
def test_every_bad_part_is_refused_with_the_named_checks_own_message(name: str) -> None:
    req = _bad_cases()[name]
    want = _refusal(named, req)
    assert _refusal(vi.heartbeat_parts, req) == want
    if not name.startswith("histogram"):  # a bad histogram raises from the one pass itself
        assert vi._parts_ok(req, LIMITS) is False

"""Malformed and absurd requests: INVALID_ARGUMENT / HTTP 400 naming the field, nothing stored."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable

import grpc
import pytest

from sennet.proto.contract import HEARTBEAT, REGISTER
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.controlplane import Served, heartbeat_request

U63 = (1 << 63) - 1


def _event(**over: object) -> pb.Event:
    fields: dict[str, object] = dict(
        ts_unix_ns=1,
        ifindex=7,
        direction=pb.DIRECTION_RX,
        kind="large_packet",
        pkt_len=1500,
        ip_version=4,
        l4_proto=17,
        src_port=1,
        dst_port=2,
        src_addr="10.0.0.1",
        dst_addr="10.0.0.2",
    )
    fields.update(over)
    return pb.Event(**fields)  # type: ignore[arg-type]


Mutation = Callable[[pb.HeartbeatRequest], None]


def _same_seq_twice(r: pb.HeartbeatRequest) -> None:
    r.event_stream = "s1"
    r.recent_events.extend([_event(seq=1), _event(seq=1)])


CASES: list[tuple[str, Mutation, str]] = [
    ("missing agent id", lambda r: r.ClearField("agent_id"), "agent_id: is required"),
    (
        "negative uptime",
        lambda r: setattr(r, "uptime_seconds", -1.0),
        "uptime_seconds: -1.0 is not in 0..3153600000",
    ),
    (
        "infinite uptime",
        lambda r: setattr(r, "uptime_seconds", float("inf")),
        "uptime_seconds: inf is not in 0..3153600000",
    ),
    (
        "counter past 2^63-1",
        lambda r: setattr(r.interfaces[0], "rx_bytes", U63 + 1),
        f"interfaces[0].rx_bytes: {U63 + 1} exceeds {U63} (2^63-1); not a plausible counter",
    ),
    (
        "interface without a name",
        lambda r: setattr(r.interfaces[0], "name", ""),
        "interfaces[0].name: '' is not an interface name",
    ),
    (
        "interface name with a quote",
        lambda r: setattr(r.interfaces[0], "name", 'et"h'),
        "interfaces[0].name: 'et\"h' is not an interface name",
    ),
    (
        "interface listed twice",
        lambda r: r.interfaces.append(r.interfaces[0]),
        "interfaces[1].name: 'eth1' appears twice",
    ),
    (
        "ifindex zero",
        lambda r: setattr(r.interfaces[0], "ifindex", 0),
        "interfaces[0].ifindex: is required (ifindex 0 does not exist)",
    ),
    (
        "upper-case event kind",
        lambda r: r.events_by_kind.__setitem__("Large", 1),
        "events_by_kind['Large']: kind must match [a-z][a-z0-9_]{0,31}",
    ),
    (
        "absurd ring-buffer drop count",
        lambda r: r.ringbuf_drops_by_kind.__setitem__("x", U63 + 5),
        f"ringbuf_drops_by_kind['x']: {U63 + 5} exceeds {U63} (2^63-1); not a plausible counter",
    ),
    (
        "event port above 65535",
        lambda r: r.recent_events.append(_event(dst_port=70000)),
        "recent_events[0].dst_port: 70000 is out of range 0..65535",
    ),
    (
        "event without a direction",
        lambda r: r.recent_events.append(_event(direction=pb.DIRECTION_UNSPECIFIED)),
        "recent_events[0].direction: must be DIRECTION_RX or DIRECTION_TX",
    ),
    (
        "event address not an address",
        lambda r: r.recent_events.append(_event(src_addr="10.0.0")),
        "recent_events[0].src_addr: '10.0.0' is not an IP address",
    ),
    (
        "event IPv6 address in an IPv4 event",
        lambda r: r.recent_events.append(_event(dst_addr="::1")),
        "recent_events[0].dst_addr: is IPv6 but ip_version is 4",
    ),
    (
        "event with three VLAN tags",
        lambda r: r.recent_events.append(_event(vlan_tags=3)),
        "recent_events[0].vlan_tags: 3 is out of range 0..2",
    ),
    (
        "too many events",
        lambda r: r.recent_events.extend(_event() for _ in range(1025)),
        "recent_events: has 1025 entries, at most 1024 allowed",
    ),
    (
        "event numbers that do not increase",
        _same_seq_twice,
        "recent_events[1].seq: 1 does not increase (after 1); events in a stream are numbered "
        "from 1 up",
    ),
    (
        "event stream id with a space",
        lambda r: setattr(r, "event_stream", "a b"),
        "event_stream: must be 1-64 characters of [A-Za-z0-9_-]",
    ),
    (
        "agent version with a newline",
        lambda r: setattr(r, "agent_version", "1\n2"),
        "agent_version: contains control characters",
    ),
]


def _stored_heartbeats(served: Served, agent_id: str) -> int:
    with sqlite3.connect(served.cp.db) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM heartbeats WHERE agent_id = ?", (agent_id,)
        ).fetchone()
    return int(n)


@pytest.mark.parametrize(("case", "mutate", "message"), CASES, ids=[c[0] for c in CASES])
def test_an_absurd_heartbeat_is_invalid_argument_naming_the_field_over_grpc_and_connect(
    shared: Served, case: str, mutate: Mutation, message: str
) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)
    req = heartbeat_request(agent_id, rx=(1, 60))
    mutate(req)
    assert shared.cp.heartbeat(token, req) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    status, body = shared.cp.connect(
        HEARTBEAT.name, req.SerializeToString(), token, content_type="application/proto"
    )
    assert (status, body) == (400, {"code": "invalid_argument", "message": message})
    assert _stored_heartbeats(shared, agent_id) == 0


def test_bytes_that_are_not_protobuf_are_invalid_argument(shared: Served) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)
    code, details, _ = shared.cp.call_raw(HEARTBEAT.name, b"\xff\xff\xff\xff", token)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("request: not a valid sentinel.v1.HeartbeatRequest protobuf (")
    assert _stored_heartbeats(shared, agent_id) == 0


def test_an_oversized_message_is_rejected_before_decoding(shared: Served) -> None:
    _, token = shared.cp.register(shared.bootstrap)
    blob = b"\x00" * ((1 << 20) + 1)
    code, details, _ = shared.cp.call_raw(HEARTBEAT.name, blob, token)
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "request: message of 1048577 bytes exceeds the limit of 1048576 bytes",
    )
    status, body = shared.cp.connect(HEARTBEAT.name, blob, token)
    assert (status, body) == (
        413,
        {
            "code": "invalid_argument",
            "message": "request: message of 1048577 bytes exceeds the limit of 1048576 bytes",
        },
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b"{not json",
            "request: not a valid sentinel.v1.HeartbeatRequest JSON (Failed to load "
            "JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1).)",
        ),
        (
            b'{"agentId": "x", "uptimeSeconds": "soon"}',
            "request: not a valid sentinel.v1.HeartbeatRequest JSON (Failed to parse uptimeSeconds "
            "field: Couldn't parse float: soon at HeartbeatRequest.uptimeSeconds.)",
        ),
        (
            b'{"interfaces": [{"name": "eth0", "rxPackets": -5}]}',
            "request: not a valid sentinel.v1.HeartbeatRequest JSON (Failed to parse interfaces "
            "field: Failed to parse rxPackets field: Value out of range: -5..)",
        ),
        (b"\xff\xfe", "request: body is not UTF-8 (invalid start byte at byte 0)"),
    ],
    ids=["truncated", "string for a number", "negative counter", "not utf-8"],
)
def test_bad_json_over_connect_is_http_400_naming_the_problem(
    shared: Served, body: bytes, message: str
) -> None:
    _, token = shared.cp.register(shared.bootstrap)
    status, reply = shared.cp.connect(HEARTBEAT.name, body, token)
    assert (status, reply) == (400, {"code": "invalid_argument", "message": message})


def test_an_unknown_json_field_is_http_400_naming_it(shared: Served) -> None:
    _, token = shared.cp.register(shared.bootstrap)
    status, reply = shared.cp.connect(HEARTBEAT.name, b'{"colour": "blue"}', token)
    assert status == 400
    assert reply["message"].startswith(
        "request: not a valid sentinel.v1.HeartbeatRequest JSON (Message type "
        '"sentinel.v1.HeartbeatRequest" has no field named "colour"'
    )


def test_a_register_with_a_malformed_agent_id_names_the_field(shared: Served) -> None:
    req = REGISTER.request(agent_id="2B7C6C1E-7D3A-4B8F-9A41-3F0E7E2C1A10")
    code, details, _ = shared.cp.call_raw(REGISTER.name, req.SerializeToString(), shared.bootstrap)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == (
        "agent_id: '2B7C6C1E-7D3A-4B8F-9A41-3F0E7E2C1A10' is not in canonical "
        "form (want 2b7c6c1e-7d3a-4b8f-9a41-3f0e7e2c1a10)"
    )


def test_an_unsupported_content_type_is_http_415(shared: Served) -> None:
    # The Connect spec answers an unknown content type at the HTTP level: 415 with the
    # accepted types in Accept-Post and no Connect error body (connectrpc does exactly that).
    _, token = shared.cp.register(shared.bootstrap)
    call = urllib.request.Request(
        shared.cp.http + HEARTBEAT.path,
        data=b"x",
        headers={"Content-Type": "text/plain", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(call, timeout=30)
    assert refused.value.code == 415
    assert refused.value.headers.get("Accept-Post") == "application/json, application/proto"
    assert refused.value.read() == b""


def test_the_server_keeps_serving_after_every_malformed_request(shared: Served) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)
    assert shared.cp.heartbeat(token, heartbeat_request(agent_id, rx=(3, 180))) == (
        grpc.StatusCode.OK,
        "",
    )
    status, body = shared.cp.get("/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert shared.cp.proc is not None and shared.cp.proc.poll() is None

"""Generated requests against the real control plane: it answers every one, never breaks.

Raw bytes and structured heartbeats over gRPC, JSON and binary bodies over
Connect, all sent to one running process with an enrolled agent's token. Each
answer must be a deliberate one (OK or a refusal naming why, never INTERNAL,
UNKNOWN or UNAVAILABLE, never an HTTP 5xx), and the process must stay healthy.
On a failure hypothesis prints the smallest failing request and a
`@reproduce_failure` blob to replay it.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sennet.proto.contract import HEARTBEAT, REGISTER
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.controlplane import Served

pytestmark = pytest.mark.integration

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Counters near the edges of SQLite's signed 64-bit INTEGER and of uint64 come up often, and
# the same few series names repeat, so consecutive examples drive one series through resets.
U64 = st.sampled_from([0, 1, 5, 2**63 - 1, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1)
NAMES = st.text(max_size=20) | st.sampled_from(["eth0", "eth1", "large_packet", "tcp_null"])


@pytest.fixture(scope="module")
def enrolled(shared: Served) -> tuple[Served, str, str]:
    agent_id, token = shared.cp.register(shared.bootstrap)
    return shared, agent_id, token


def interfaces() -> st.SearchStrategy[pb.InterfaceCounters]:
    return st.builds(
        pb.InterfaceCounters,
        name=mostly(st.sampled_from(["eth0", "eth1"]), NAMES),
        ifindex=st.integers(0, 2**32 - 1),
        rx_packets=U64,
        rx_bytes=U64,
        tx_packets=U64,
        tx_bytes=U64,
    )


def events() -> st.SearchStrategy[pb.Event]:
    return st.builds(
        pb.Event,
        ts_unix_ns=U64,
        ifindex=st.integers(0, 2**32 - 1),
        direction=st.sampled_from([0, 1, 2]),
        kind=NAMES,
        pkt_len=st.integers(0, 2**32 - 1),
        ip_version=st.integers(0, 2**32 - 1),
        src_addr=st.text(max_size=45),
        dst_addr=st.text(max_size=45),
        seq=U64,
    )


def mostly(valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid three times in four, so most requests reach the store, not just the validator."""
    return st.one_of(valid, valid, valid, odd)


KINDS = st.sampled_from(["large_packet", "tcp_null", "land", "truncated_l4"])


@st.composite
def heartbeats(draw: st.DrawFn, agent_id: str) -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(
        agent_id=draw(mostly(st.just(agent_id), st.text(max_size=40))),
        agent_version=draw(mostly(st.just("0.1.0"), st.text(max_size=30))),
        kernel_version=draw(mostly(st.just("6.1.0"), st.text(max_size=30))),
        uptime_seconds=draw(mostly(st.floats(0, 1e7), st.floats())),
        interfaces=draw(st.lists(interfaces(), max_size=3, unique_by=lambda i: i.name)),
        events_by_kind=draw(st.dictionaries(mostly(KINDS, NAMES), U64, max_size=4)),
        ringbuf_drops_by_kind=draw(st.dictionaries(mostly(KINDS, NAMES), U64, max_size=4)),
        recent_events=draw(mostly(st.just([]), st.lists(events(), max_size=2))),
        events_dropped_by_agent=draw(U64),
        event_stream=draw(mostly(st.just(""), st.text(max_size=40))),
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


def test_structured_heartbeats_get_an_answer_and_never_a_failure(
    enrolled: tuple[Served, str, str],
) -> None:
    served, agent_id, token = enrolled

    @FUZZ
    @given(req=heartbeats(agent_id), reset_to=U64)
    def one(req: pb.HeartbeatRequest, reset_to: int) -> None:
        code, details = served.cp.heartbeat(token, req)
        assert code in DELIBERATE, (code, details)
        # The same series again, every counter now at `reset_to`: a reset, or a jump.
        for itf in req.interfaces:
            itf.rx_packets = itf.rx_bytes = itf.tx_packets = itf.tx_bytes = reset_to
        code, details = served.cp.heartbeat(token, req)
        assert code in DELIBERATE, (code, details)

    one()
    assert served.cp.get("/health")[0] == 200


def test_raw_grpc_bodies_get_an_answer_and_never_a_failure(
    enrolled: tuple[Served, str, str],
) -> None:
    served, _agent_id, token = enrolled

    @FUZZ
    @given(body=st.binary(max_size=2048), method=st.sampled_from([HEARTBEAT, REGISTER]))
    def one(body: bytes, method: Any) -> None:
        code, details, _ = served.cp.call_raw(method, body, token)
        assert code in DELIBERATE, (code, details)

    one()
    assert served.cp.get("/health")[0] == 200


def test_connect_json_and_binary_bodies_get_a_deliberate_status(
    enrolled: tuple[Served, str, str],
) -> None:
    served, agent_id, token = enrolled
    valid = json.loads(json_format.MessageToJson(pb.HeartbeatRequest(agent_id=agent_id)))

    @FUZZ
    @given(
        doc=JSON | st.dictionaries(st.sampled_from([*valid, "interfaces", "eventsByKind"]), JSON),
        raw=st.binary(max_size=1024),
        as_json=st.booleans(),
    )
    def one(doc: Any, raw: bytes, as_json: bool) -> None:
        if as_json:
            status, reply = served.cp.connect(HEARTBEAT, json.dumps(doc).encode(), token)
        else:
            status, reply = served.cp.connect(
                HEARTBEAT, raw, token, content_type="application/proto"
            )
        assert status in (200, 400, 403), (status, reply)
        if status != 200:
            assert reply.get("code") and reply.get("message"), reply

    one()
    assert served.cp.get("/health")[0] == 200


def test_counter_sequences_at_the_edges_are_stored_or_refused_by_field(
    enrolled: tuple[Served, str, str],
) -> None:
    """One fresh agent per example reports a sequence of readings of one counter (rises,
    resets, jumps to the edges of signed and unsigned 64 bits): each reading is stored or
    refused as INVALID_ARGUMENT naming the field, never a store failure."""
    served, _agent_id, _token = enrolled

    @settings(FUZZ, max_examples=150)
    @given(readings=st.lists(U64, min_size=2, max_size=5))
    def one(readings: list[int]) -> None:
        agent_id, token = served.cp.register(served.bootstrap)
        for n, raw in enumerate(readings):
            req = pb.HeartbeatRequest(
                agent_id=agent_id,
                agent_version="0.1.0",
                kernel_version="6.1.0",
                uptime_seconds=float(n),
                interfaces=[pb.InterfaceCounters(name="eth0", ifindex=2, rx_packets=raw)],
            )
            code, details = served.cp.heartbeat(token, req)
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (
                readings,
                code,
                details,
            )
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                assert details.startswith("interfaces[0].rx_packets"), details

    one()
    assert served.cp.get("/health")[0] == 200

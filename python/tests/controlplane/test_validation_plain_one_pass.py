"""The one-pass check of a heartbeat's plain part agrees with the named checks.

`validate.heartbeat` first runs `_plain_ok` (every check of the agent id,
texts, uptime, interfaces, event counts and events, no field names spelled
out) and only on a "no" the named checks. These tests hold it to that: a good
heartbeat passes the one pass alone, and every bad heartbeat of the transport
tests (`test_validation.CASES`) and a few more is doubted by it and refused
with exactly the named checks' message. In-process: the checks are pure.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from sennet.controlplane import validate
from sennet.controlplane.refusals import RequestError
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.controlplane import heartbeat_request
from sennet.testing.telemetry import full_request
from tests.controlplane.test_validation import CASES, U63

AGENT = "6f1c2d3e-0000-4000-8000-000000000001"

MORE: list[tuple[str, Callable[[pb.HeartbeatRequest], None], str]] = [
    (
        "upper-case agent id",
        lambda r: setattr(r, "agent_id", AGENT.upper()),
        f"agent_id: {AGENT.upper()!r} is not in canonical form (want {AGENT})",
    ),
    (
        "agent id without hyphens",
        lambda r: setattr(r, "agent_id", AGENT.replace("-", "")),
        f"agent_id: {AGENT.replace('-', '')!r} is not in canonical form (want {AGENT})",
    ),
    (
        "unknown event kind",
        lambda r: r.events_by_kind.__setitem__("made_up", 1),
        "events_by_kind['made_up']: 'made_up' is not a known event kind (one of "
        + ", ".join(sorted(validate.EVENT_KINDS))
        + ")",
    ),
    (
        "agent drop count past 2^63-1",
        lambda r: setattr(r, "events_dropped_by_agent", U63 + 1),
        f"events_dropped_by_agent: {U63 + 1} exceeds {U63} (2^63-1); not a plausible counter",
    ),
    (
        "kernel version too long",
        lambda r: setattr(r, "kernel_version", "k" * 254),
        "kernel_version: is 254 characters, at most 253 allowed",
    ),
]


def test_a_good_heartbeat_passes_the_one_pass_alone() -> None:
    for req in (heartbeat_request(AGENT, rx=(1, 60)), full_request(AGENT)):
        assert validate._plain_ok(req) is True
        validate.heartbeat(req)  # and nothing else refuses it


def test_a_heartbeat_with_increasing_stream_numbers_passes_the_one_pass() -> None:
    req = heartbeat_request(str(uuid.uuid4()), rx=(1, 60))
    req.event_stream = "s1"
    for seq in (1, 2, 5):
        req.recent_events.add(
            ts_unix_ns=1, direction=pb.DIRECTION_RX, kind="land", ip_version=4, seq=seq
        )
    assert validate._plain_ok(req) is True


@pytest.mark.parametrize(
    ("case", "mutate", "message"), CASES + MORE, ids=[c[0] for c in CASES + MORE]
)
def test_every_bad_heartbeat_is_doubted_and_refused_as_the_named_checks_refuse_it(
    case: str, mutate: Callable[[pb.HeartbeatRequest], None], message: str
) -> None:
    req = heartbeat_request(AGENT, rx=(1, 60))
    mutate(req)
    assert validate._plain_ok(req) is False
    with pytest.raises(RequestError) as err:
        validate.heartbeat(req)
    assert str(err.value) == message
    with pytest.raises(RequestError) as named:
        validate._plain_named(req)
    assert str(named.value) == message

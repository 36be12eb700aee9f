"""Heartbeat fields 15-16: the running image and the last update outcome, at the control plane.

Real control-plane process, real gRPC and Connect, real SQLite, /metrics parsed by the
reference parser and checked by promtool.
"""

from __future__ import annotations

import subprocess
import uuid

import grpc
from google.protobuf import json_format

from sennet.controlplane.fleet import AgentView, Fleet
from sennet.controlplane.metrics import Exposition, ServerMetrics
from sennet.proto.contract import HEARTBEAT
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.controlplane import Served, heartbeat_request
from sennet.testing.scrape import parse_samples, sample

OK = (grpc.StatusCode.OK, "")
DIGEST_A = "ab" * 32
DIGEST_B = "cd" * 32


def with_image(
    req: pb.HeartbeatRequest,
    version: str = "0.2.0",
    digest: str = DIGEST_B,
    slot: str = "b",
    outcome: pb.UpdateOutcome | None = None,
) -> pb.HeartbeatRequest:
    req.image.CopyFrom(pb.ImageIdentity(version=version, digest=digest, slot=slot))
    if outcome is not None:
        req.last_update.CopyFrom(outcome)
    return req


COMMITTED = pb.UpdateOutcome(
    result="committed", reason="", from_version="0.1.0", to_version="0.2.0", at_unix=1_795_000_000.5
)


def test_image_and_outcome_over_grpc_are_exported_exactly_and_survive_a_restart(
    fresh: Served,
) -> None:
    cp = fresh.cp
    agent_id, token = cp.register(fresh.bootstrap)
    assert cp.heartbeat(token, with_image(heartbeat_request(agent_id), outcome=COMMITTED)) == OK
    for _ in range(2):  # before and after a restart (the latest report is stored)
        s = cp.samples()
        info = {"agent": agent_id, "version": "0.2.0", "slot": "b", "digest": DIGEST_B}
        assert sample(s, "sennet_agent_image_info", **info) == 1
        outcome = {
            "agent": agent_id,
            "result": "committed",
            "reason": "",
            "from_version": "0.1.0",
            "to_version": "0.2.0",
        }
        assert sample(s, "sennet_agent_update_last_outcome", **outcome) == 1
        at = sample(s, "sennet_agent_update_last_outcome_timestamp_seconds", agent=agent_id)
        assert at == 1_795_000_000.5
        cp.restart()
    stored = cp.query(
        "SELECT image_version, image_slot, update_result FROM agents WHERE agent_id = ?", agent_id
    )
    assert stored == [("0.2.0", "b", "committed")]


def test_a_json_heartbeat_over_connect_reports_the_image_and_a_rollback(shared: Served) -> None:
    cp = shared.cp
    agent_id, token = cp.register(shared.bootstrap)
    rolled = pb.UpdateOutcome(
        result="rolled_back",
        reason="health_check_failed",
        from_version="0.1.0",
        to_version="0.2.0",
        at_unix=1_795_000_100.0,
    )
    req = with_image(heartbeat_request(agent_id), "0.1.0", DIGEST_A, "a", rolled)
    status, body = cp.connect(HEARTBEAT, json_format.MessageToJson(req).encode(), token)
    assert status == 200, body
    s = cp.samples()
    info = {"agent": agent_id, "version": "0.1.0", "slot": "a", "digest": DIGEST_A}
    assert sample(s, "sennet_agent_image_info", **info) == 1
    labels = {
        "agent": agent_id,
        "result": "rolled_back",
        "reason": "health_check_failed",
        "from_version": "0.1.0",
        "to_version": "0.2.0",
    }
    assert sample(s, "sennet_agent_update_last_outcome", **labels) == 1


def test_a_heartbeat_without_an_outcome_keeps_the_known_one_and_an_agent_without_image_has_none(
    shared: Served,
) -> None:
    cp = shared.cp
    agent_id, token = cp.register(shared.bootstrap)
    assert cp.heartbeat(token, with_image(heartbeat_request(agent_id), outcome=COMMITTED)) == OK
    assert cp.heartbeat(token, with_image(heartbeat_request(agent_id, rx=(1, 60)))) == OK
    plain_id, plain_token = cp.register(shared.bootstrap)
    assert cp.heartbeat(plain_token, heartbeat_request(plain_id)) == OK
    s = cp.samples()
    assert sample(s, "sennet_agent_update_last_outcome_timestamp_seconds", agent=agent_id) == (
        1_795_000_000.5
    )
    names = {name for name, labels in s if dict(labels).get("agent") == plain_id}
    assert "sennet_agent_image_info" not in names
    assert "sennet_agent_update_last_outcome" not in names


def test_bad_image_and_outcome_fields_are_refused_naming_the_field(shared: Served) -> None:
    cp = shared.cp
    agent_id, token = cp.register(shared.bootstrap)
    cases = [
        (with_image(heartbeat_request(agent_id), digest="XYZ"), "image.digest"),
        (with_image(heartbeat_request(agent_id), slot="c"), "image.slot"),
        (with_image(heartbeat_request(agent_id), version='0.2"}'), "image.version"),
        (
            with_image(heartbeat_request(agent_id), outcome=pb.UpdateOutcome(result="fine")),
            "last_update.result",
        ),
        (
            with_image(
                heartbeat_request(agent_id),
                outcome=pb.UpdateOutcome(result="failed", reason="bad\nreason"),
            ),
            "last_update.reason",
        ),
        (
            with_image(
                heartbeat_request(agent_id),
                outcome=pb.UpdateOutcome(result="failed", at_unix=float("nan")),
            ),
            "last_update.at_unix",
        ),
    ]
    for req, field in cases:
        code, details = cp.heartbeat(token, req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, details)
        assert details.startswith(f"{field}:"), details


def test_promtool_accepts_the_image_and_outcome_families(shared: Served) -> None:
    cp = shared.cp
    agent_id, token = cp.register(shared.bootstrap)
    assert cp.heartbeat(token, with_image(heartbeat_request(agent_id), outcome=COMMITTED)) == OK
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=cp.metrics_text(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_fast_text_gives_the_same_image_samples_as_the_prometheus_client_path() -> None:
    views = []
    for n in range(20):
        aid = str(uuid.UUID(int=n + 1))
        req = heartbeat_request(aid)
        if n % 3:
            with_image(req, f"0.{n}.0", f"{n:02x}" * 32, "ab"[n % 2], COMMITTED if n % 2 else None)
        view, _ = AgentView(aid).apply(req, 1_800_000_000.0)
        views.append(view)
    fleet = Fleet(views)
    expo = Exposition(ServerMetrics(agents=lambda: len(fleet)), fleet, stale_after_s=1e12)
    fast = parse_samples(expo.render(fast=True).decode())
    assert fast == parse_samples(expo.render(fast=False).decode())
    images = [k for k in fast if k[0] == "sennet_agent_image_info"]
    outcomes = [k for k in fast if k[0] == "sennet_agent_update_last_outcome"]
    assert (len(images), len(outcomes)) == (13, 7)


def test_the_fast_text_follows_a_changed_report_and_drops_a_gone_agent() -> None:
    aid = str(uuid.UUID(int=7))
    view, _ = AgentView(aid).apply(with_image(heartbeat_request(aid)), 1_800_000_000.0)
    fleet = Fleet([view])
    expo = Exposition(ServerMetrics(agents=lambda: len(fleet)), fleet, stale_after_s=1e12)
    expo.render(fast=True)
    same, _ = view.apply(with_image(heartbeat_request(aid)), 1_800_000_010.0)
    assert same.image is view.image  # unchanged report, same object: the cached text is reused
    newer, _ = same.apply(with_image(heartbeat_request(aid), outcome=COMMITTED), 1_800_000_020.0)
    fleet.publish({aid: newer})
    fast = parse_samples(expo.render(fast=True).decode())
    assert fast == parse_samples(expo.render(fast=False).decode())
    assert sample(fast, "sennet_agent_update_last_outcome_timestamp_seconds", agent=aid) == (
        1_795_000_000.5
    )

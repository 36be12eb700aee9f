"""Authentication and authorization over both transports, and the rejection counters."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from sennet.proto.contract import HEARTBEAT, REGISTER, Method
from sennet.testing.controlplane import (
    ControlPlane,
    Served,
    cli,
    create_bootstrap_token,
    heartbeat_request,
    running,
)

TRANSPORTS = ["grpc", "connect"]


def call(
    cp: ControlPlane, transport: str, method: Method[Any, Any], req: Message, token: str | None
) -> tuple[str, str]:
    return cp.call(transport, method, req, token)


def rejected(cp: ControlPlane, method: str, code: str, reason: str) -> float:
    return cp.rejected(method, code, reason)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_agent_enrols_with_a_bootstrap_token_and_heartbeats_with_its_own(
    shared: Served, transport: str
) -> None:
    agent_id = str(uuid.uuid4())
    req = REGISTER.request(agent_id=agent_id, hostname="h")
    if transport == "grpc":
        _, token = shared.cp.register(shared.bootstrap, agent_id)
    else:
        status, body = shared.cp.connect(
            REGISTER.name, json_format.MessageToJson(req).encode(), shared.bootstrap
        )
        assert status == 200 and body["agentId"] == agent_id
        token = body["agentToken"]
    assert token.startswith("sa.")
    assert call(shared.cp, transport, HEARTBEAT, heartbeat_request(agent_id), token) == ("ok", "")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_heartbeat_without_a_token_is_unauthenticated_and_counted(
    shared: Served, transport: str
) -> None:
    agent_id, _ = shared.cp.register(shared.bootstrap)
    before = rejected(shared.cp, "Heartbeat", "unauthenticated", "missing_token")
    assert call(shared.cp, transport, HEARTBEAT, heartbeat_request(agent_id), None) == (
        "unauthenticated",
        "authorization: missing; send 'authorization: Bearer <token>'",
    )
    assert rejected(shared.cp, "Heartbeat", "unauthenticated", "missing_token") == before + 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_wrong_token_is_unauthenticated(shared: Served, transport: str) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    before = rejected(shared.cp, "Heartbeat", "unauthenticated", "unknown_token")
    assert call(shared.cp, transport, HEARTBEAT, heartbeat_request(agent_id), forged) == (
        "unauthenticated",
        "authorization: token is not valid",
    )
    assert call(shared.cp, transport, HEARTBEAT, heartbeat_request(agent_id), "hunter2") == (
        "unauthenticated",
        "authorization: not a Sennet token",
    )
    assert rejected(shared.cp, "Heartbeat", "unauthenticated", "unknown_token") == before + 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_another_agents_token_is_permission_denied(shared: Served, transport: str) -> None:
    victim, _ = shared.cp.register(shared.bootstrap)
    _, thief_token = shared.cp.register(shared.bootstrap)
    before = rejected(shared.cp, "Heartbeat", "permission_denied", "agent_mismatch")
    assert call(shared.cp, transport, HEARTBEAT, heartbeat_request(victim), thief_token) == (
        "permission_denied",
        f"agent_id: the token belongs to another agent, not {victim}",
    )
    assert rejected(shared.cp, "Heartbeat", "permission_denied", "agent_mismatch") == before + 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tokens_of_the_wrong_kind_or_agent_are_permission_denied(
    shared: Served, transport: str
) -> None:
    # Issue 11 changed the second half: Register now takes the agent's own token (rotation,
    # see test_identity.py), so an agent token is refused only for another agent's id.
    agent_id, token = shared.cp.register(shared.bootstrap)
    other, _ = shared.cp.register(shared.bootstrap)
    assert call(shared.cp, transport, HEARTBEAT, heartbeat_request(agent_id), shared.bootstrap) == (
        "permission_denied",
        "authorization: Heartbeat needs an agent token, not a bootstrap token",
    )
    assert call(shared.cp, transport, REGISTER, REGISTER.request(agent_id=other), token) == (
        "permission_denied",
        f"agent_id: the token belongs to another agent, not {other}",
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_revoked_bootstrap_token_can_no_longer_enrol(fresh: Served, transport: str) -> None:
    token_id = fresh.bootstrap.split(".")[1]
    assert cli(fresh.cp.db, "token", "revoke", token_id).stdout == f"revoked {token_id}\n"
    req = REGISTER.request(agent_id=str(uuid.uuid4()))
    assert call(fresh.cp, transport, REGISTER, req, fresh.bootstrap) == (
        "unauthenticated",
        f"authorization: token {token_id} was revoked",
    )
    assert rejected(fresh.cp, "Register", "unauthenticated", "revoked_token") == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_enrolling_again_revokes_the_agents_previous_token(shared: Served, transport: str) -> None:
    # Issue 11: enrolling an existing id again takes the agent's own token (rotation); a
    # bootstrap token alone is refused (test_identity.py). The revocation rule is unchanged.
    agent_id, old = shared.cp.register(shared.bootstrap)
    _, new = shared.cp.register(old, agent_id)
    old_id = old.split(".")[1]
    assert call(shared.cp, transport, HEARTBEAT, heartbeat_request(agent_id), old) == (
        "unauthenticated",
        f"authorization: token {old_id} was revoked",
    )
    assert call(shared.cp, transport, HEARTBEAT, heartbeat_request(agent_id), new) == ("ok", "")


def test_tokens_are_stored_only_as_sha256_digests(shared: Served) -> None:
    agent_id, token = shared.cp.register(shared.bootstrap)
    raw = b"".join(p.read_bytes() for p in shared.cp.db.parent.glob("cp.db*"))
    assert token.encode() not in raw and shared.bootstrap.encode() not in raw
    secret = token.split(".")[2]
    assert secret.encode() not in raw
    with sqlite3.connect(shared.cp.db) as conn:
        (digest,) = conn.execute(
            "SELECT digest FROM tokens WHERE agent_id = ? AND revoked_at IS NULL", (agent_id,)
        ).fetchone()
    assert digest == hashlib.sha256(token.encode()).hexdigest()


def test_secrets_never_appear_in_the_control_plane_log(shared: Served) -> None:
    _, token = shared.cp.register(shared.bootstrap)
    log = shared.cp.log()
    assert "event=agent_enrolled " in log
    assert token not in log and shared.bootstrap not in log
    assert token.split(".")[2] not in log
    assert f"issued_id={token.split('.')[1]}" in log  # ids are not secrets, and help audits


def test_grpc_status_codes_map_to_connect_http_statuses(shared: Served) -> None:
    agent_id, _ = shared.cp.register(shared.bootstrap)
    body = json_format.MessageToJson(heartbeat_request(agent_id)).encode()
    assert shared.cp.connect(HEARTBEAT.name, body, None)[0] == 401
    assert shared.cp.connect(HEARTBEAT.name, body, shared.bootstrap)[0] == 403
    bad = json_format.MessageToJson(heartbeat_request("nope")).encode()
    _, token = shared.cp.register(shared.bootstrap)
    assert shared.cp.connect(HEARTBEAT.name, bad, token)[0] == 400


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_agent_token_revoked_from_the_command_line_works_only_while_it_is_cached(
    tmp_path: Path, transport: str
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    # A cache longer than the test: the revoked token is still honoured from the cache.
    with running(db, tmp_path, ["--agent-token-cache", "3600"]) as cp:
        agent_id, token = cp.register(bootstrap)
        req = heartbeat_request(agent_id)
        assert call(cp, transport, HEARTBEAT, req, token) == ("ok", "")  # now cached
        token_id = token.split(".")[1]
        assert cli(db, "token", "revoke", token_id).returncode == 0
        assert call(cp, transport, HEARTBEAT, req, token) == ("ok", "")
        assert cp.stop() == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_agent_token_revoked_from_the_command_line_stops_working_once_its_cache_lapses(
    tmp_path: Path, transport: str
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    # No cache: the very next call reads the revocation, on either transport.
    with running(db, tmp_path, ["--agent-token-cache", "0"]) as cp:
        agent_id, token = cp.register(bootstrap)
        req = heartbeat_request(agent_id)
        assert call(cp, transport, HEARTBEAT, req, token) == ("ok", "")
        token_id = token.split(".")[1]
        assert cli(db, "token", "revoke", token_id).returncode == 0
        assert call(cp, transport, HEARTBEAT, req, token) == (
            "unauthenticated",
            f"authorization: token {token_id} was revoked",
        )
        assert rejected(cp, "Heartbeat", "unauthenticated", "revoked_token") == 1
        assert cp.stop() == 0

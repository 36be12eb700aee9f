"""Identity: who may enrol an agent id, bootstrap token expiry and use limits,
disabled agents, and doors that must not act on an agent. All against the real process."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sennet.controlplane import tokens
from sennet.controlplane.identity import Identity
from sennet.controlplane.metrics import REJECT_REASONS
from sennet.controlplane.refusals import RequestError
from sennet.controlplane.schema import MIGRATIONS
from sennet.controlplane.store import Store
from sennet.proto.contract import HEARTBEAT, METHODS, REGISTER
from sennet.testing.controlplane import (
    ControlPlane,
    Served,
    cli,
    create_bootstrap_token,
    heartbeat_request,
    running,
)

TRANSPORTS = ["grpc", "connect"]


@pytest.fixture
def uncached(tmp_path: Path) -> Iterator[Served]:
    """A control plane that reads every agent token afresh (an operator's command applies at
    once, not after the 1 s token cache)."""
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--agent-token-cache", "0"]) as cp:
        yield Served(cp, bootstrap)
        assert cp.stop() == 0, cp.log()


def ok(cp: ControlPlane, token: str, agent_id: str) -> bool:
    return cp.call("grpc", HEARTBEAT, heartbeat_request(agent_id), token) == ("ok", "")


def agents(db: Path) -> dict[str, dict[str, Any]]:
    out = cli(db, "agent", "list", "--json")
    assert out.returncode == 0, out.stderr
    return {row["agent_id"]: row for row in map(json.loads, out.stdout.splitlines())}


def token_info(db: Path, bootstrap: str) -> dict[str, Any]:
    out = cli(db, "token", "list", "--kind", "bootstrap", "--json")
    assert out.returncode == 0, out.stderr
    rows: dict[str, dict[str, Any]] = {
        row["id"]: row for row in map(json.loads, out.stdout.splitlines())
    }
    return rows[bootstrap.split(".")[1]]


def already_enrolled(agent_id: str) -> tuple[str, str]:
    return (
        "permission_denied",
        f"agent_id: agent {agent_id} is already enrolled; a bootstrap token cannot enrol it "
        f"again until an operator runs `sennet-controlplane agent reset {agent_id}` (or the "
        "agent rotates with its own token)",
    )


# -- taking over an agent id ---------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_bootstrap_token_cannot_take_over_an_enrolled_agent_and_the_agent_keeps_working(
    shared: Served, transport: str
) -> None:
    cp = shared.cp
    victim, token = cp.register(shared.bootstrap, hostname="real")
    before = cp.rejected("Register", "permission_denied", "agent_already_enrolled")
    takeover = REGISTER.request(agent_id=victim, hostname="thief")
    assert cp.call(transport, REGISTER, takeover, shared.bootstrap) == already_enrolled(victim)
    assert cp.rejected("Register", "permission_denied", "agent_already_enrolled") == before + 1
    if transport == "connect":  # the HTTP status too, not just the Connect code
        body = json.dumps({"agentId": victim}).encode()
        assert cp.connect(REGISTER, body, shared.bootstrap)[0] == 403
    assert ok(cp, token, victim)  # the real agent's next heartbeat is accepted
    assert agents(cp.db)[victim]["hostname"] == "real"
    assert "event=enrolment_refused" in cp.log() and "reason=agent_already_enrolled" in cp.log()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_agent_rotates_its_token_with_its_own_token(shared: Served, transport: str) -> None:
    cp = shared.cp
    agent_id, old = cp.register(shared.bootstrap)
    if transport == "grpc":
        _, new = cp.register(old, agent_id)
    else:
        body = json.dumps({"agentId": agent_id, "hostname": "host-a"}).encode()
        status, reply = cp.connect(REGISTER, body, old)
        assert status == 200, reply
        new = reply["agentToken"]
    assert new != old and ok(cp, new, agent_id)
    assert cp.call(transport, HEARTBEAT, heartbeat_request(agent_id), old) == (
        "unauthenticated",
        f"authorization: token {old.split('.')[1]} was revoked",
    )
    assert "event=agent_token_rotated" in cp.log()


def test_agent_reset_allows_one_bootstrap_enrolment_of_that_id(shared: Served) -> None:
    cp = shared.cp
    agent_id, old = cp.register(shared.bootstrap)
    reset = cli(cp.db, "agent", "reset", agent_id)
    assert (reset.returncode, reset.stdout) == (
        0,
        f"reset {agent_id}: its next enrolment with a bootstrap token is allowed, once\n",
    )
    assert agents(cp.db)[agent_id]["reset_allowed"] is True
    assert ok(cp, old, agent_id)  # the current token works until that enrolment
    _, new = cp.register(shared.bootstrap, agent_id)
    assert ok(cp, new, agent_id) and not ok(cp, old, agent_id)
    again = REGISTER.request(agent_id=agent_id)
    assert cp.call("grpc", REGISTER, again, shared.bootstrap) == already_enrolled(agent_id)
    assert agents(cp.db)[agent_id]["reset_allowed"] is False


# -- bootstrap token expiry and use limits -------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_expired_bootstrap_token_is_unauthenticated_and_counted(
    fresh: Served, transport: str
) -> None:
    cp = fresh.cp
    short = create_bootstrap_token(cp.db, "short", "--expires-in", "1s")
    expires = token_info(cp.db, short)["expires_at"]
    time.sleep(max(0.0, expires - time.time()) + 0.05)  # the one wait: the expiry itself
    req = REGISTER.request(agent_id=str(uuid.uuid4()))
    code, message = cp.call(transport, REGISTER, req, short)
    assert (code, message.split(" expired at ")[0]) == (
        "unauthenticated",
        f"authorization: token {short.split('.')[1]}",
    )
    assert cp.rejected("Register", "unauthenticated", "expired_token") == 1
    assert token_info(cp.db, short)["state"] == "expired"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_bootstrap_token_is_used_up_after_max_uses_enrolments(
    fresh: Served, transport: str
) -> None:
    cp = fresh.cp
    limited = create_bootstrap_token(cp.db, "two", "--max-uses", "2")
    first, _ = cp.register(limited)
    # A refused takeover spends no use.
    takeover = REGISTER.request(agent_id=first)
    assert cp.call(transport, REGISTER, takeover, limited) == already_enrolled(first)
    cp.register(limited)
    assert token_info(cp.db, limited)["uses"] == 2
    req = REGISTER.request(agent_id=str(uuid.uuid4()))
    assert cp.call(transport, REGISTER, req, limited) == (
        "unauthenticated",
        f"authorization: token {limited.split('.')[1]} has been used 2 of 2 times",
    )
    assert cp.rejected("Register", "unauthenticated", "token_used_up") == 1
    info = token_info(cp.db, limited)
    assert (info["uses"], info["max_uses"], info["state"]) == (2, 2, "used_up")


def test_a_use_limit_holds_when_many_agents_enrol_at_once(fresh: Served) -> None:
    cp = fresh.cp
    limited = create_bootstrap_token(cp.db, "three", "--max-uses", "3")
    reqs = [REGISTER.request(agent_id=str(uuid.uuid4())) for _ in range(12)]
    with ThreadPoolExecutor(len(reqs)) as pool:
        codes = list(pool.map(lambda r: cp.call("grpc", REGISTER, r, limited)[0], reqs))
    assert sorted(codes) == ["ok"] * 3 + ["unauthenticated"] * 9
    assert token_info(cp.db, limited)["uses"] == 3
    assert cp.scalar("SELECT count(*) FROM agents") == 3


def test_token_create_expires_in_24h_by_default_and_token_list_shows_expiry_and_uses(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cp.db"
    default = create_bootstrap_token(db, "default")
    forever = create_bootstrap_token(db, "forever", "--expires-in", "never", "--max-uses", "3")
    week = create_bootstrap_token(db, "week", "--expires-in", "7d")
    d, f, w = (token_info(db, t) for t in (default, forever, week))
    assert d["expires_at"] - d["created_at"] == pytest.approx(86400, abs=1)
    assert (d["max_uses"], d["uses"], d["state"]) == (None, 0, "active")
    assert (f["expires_at"], f["max_uses"]) == (None, 3)
    assert w["expires_at"] - w["created_at"] == pytest.approx(7 * 86400, abs=1)
    lines = cli(db, "token", "list").stdout.splitlines()
    assert lines[0].split() == [
        *("ID", "KIND", "STATE", "CREATED", "EXPIRES", "USES", "LAST", "USED", "AGENT/NAME")
    ]
    row = next(line for line in lines if line.startswith(forever.split(".")[1])).split()
    assert row[4:6] == ["never", "0/3"]
    bad = cli(db, "token", "create", "--expires-in", "tomorrow")
    assert bad.returncode == 2
    assert "'tomorrow' is not a duration; use e.g. 30m, 24h, 7d, or never" in bad.stderr
    zero = cli(db, "token", "create", "--max-uses", "0")
    assert zero.returncode == 2 and "'0' is not a positive whole number" in zero.stderr
    assert "--expires-in DURATION" in cli(db, "token", "create", "--help").stdout


# -- disabling an agent --------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_disabled_agent_is_refused_until_enabled(uncached: Served, transport: str) -> None:
    cp = uncached.cp
    agent_id, token = cp.register(uncached.bootstrap)
    assert ok(cp, token, agent_id)
    out = cli(cp.db, "agent", "disable", agent_id)
    assert (out.returncode, out.stdout) == (0, f"disabled {agent_id} (1 token(s) revoked)\n")
    assert agents(cp.db)[agent_id]["state"] == "disabled"
    assert cp.call(transport, HEARTBEAT, heartbeat_request(agent_id), token) == (
        "permission_denied",
        f"authorization: agent {agent_id} is disabled by an operator",
    )
    assert cp.rejected("Heartbeat", "permission_denied", "agent_disabled") == 1
    req = REGISTER.request(agent_id=agent_id)
    for presented in (uncached.bootstrap, token):  # neither a bootstrap nor its own token
        code, _ = cp.call(transport, REGISTER, req, presented)
        assert code == "permission_denied"
    assert cp.rejected("Register", "permission_denied", "agent_disabled") == 2
    # `agent reset` does not undo a disable; only `agent enable` does.
    reset = cli(cp.db, "agent", "reset", agent_id)
    assert reset.returncode == 2 and f"agent {agent_id} is disabled" in reset.stderr
    assert cli(cp.db, "agent", "enable", agent_id).returncode == 0
    assert agents(cp.db)[agent_id]["state"] == "active"
    assert not ok(cp, token, agent_id)  # the old token stays revoked
    _, new = cp.register(uncached.bootstrap, agent_id)
    assert ok(cp, new, agent_id)


def test_agent_commands_name_an_unknown_agent(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    for action in ("reset", "disable", "enable"):
        out = cli(db, "agent", action, "no-such-agent")
        assert out.returncode == 2
        assert out.stderr.startswith("sennet-controlplane: error: no agent with id no-such-agent")
    assert "agent_disabled" in cli(db, "agent", "disable", "--help").stdout


# -- nothing unauthenticated acts on an agent ------------------------------------------------


def test_health_and_metrics_only_read_whatever_the_method_or_query(shared: Served) -> None:
    cp = shared.cp
    agent_id, token = cp.register(shared.bootstrap)
    assert ok(cp, token, agent_id)
    state = "SELECT * FROM agents ORDER BY agent_id"
    tokens_sql = "SELECT * FROM tokens ORDER BY token_id"
    before = (cp.query(state), cp.query(tokens_sql))
    for path in ("/health", "/metrics"):
        for query in ("", f"?agent={agent_id}&action=reset", f"?disable={agent_id}"):
            assert cp.get(path + query)[0] == 200
            for verb in ("POST", "PUT", "DELETE", "PATCH"):
                req = urllib.request.Request(
                    cp.http + path + query, data=b"{}", method=verb, headers={}
                )
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        status = resp.status
                except urllib.error.HTTPError as err:
                    status = err.code
                assert status >= 400, (verb, path, query, status)
    assert (cp.query(state), cp.query(tokens_sql)) == before
    assert ok(cp, token, agent_id)


# -- metrics, schema -----------------------------------------------------------------------


def test_every_refusal_reason_is_exposed_at_zero_for_every_method(fresh: Served) -> None:
    for reason in (
        "expired_token",
        "token_used_up",
        "agent_already_enrolled",
        "agent_disabled",
    ):
        assert reason in REJECT_REASONS
    for method in METHODS:
        for reason, code in REJECT_REASONS.items():
            assert fresh.cp.rejected(method.name, code, reason) == 0


def test_a_version_2_database_is_migrated_keeping_tokens_and_agents(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    old_bootstrap = tokens.new_token(tokens.TokenKind.BOOTSTRAP)
    old_agent = tokens.new_token(tokens.TokenKind.AGENT)
    with sqlite3.connect(db) as conn:
        conn.executescript(MIGRATIONS[0] + ";" + MIGRATIONS[1] + "; PRAGMA user_version = 2;")
        conn.execute("INSERT INTO agents (agent_id, hostname, registered_at) VALUES ('a', 'h', 1)")
        conn.executemany(
            "INSERT INTO tokens (token_id, kind, digest, agent_id, name, created_at)"
            " VALUES (?, ?, ?, ?, '', 1.0)",
            [
                (old_bootstrap.token_id, "bootstrap", tokens.digest(old_bootstrap.text), None),
                (old_agent.token_id, "agent", tokens.digest(old_agent.text), "a"),
            ],
        )
    store = Store(db)
    assert store.migrate() == 7
    identity = Identity(store)
    boot = identity.lookup_token(old_bootstrap.token_id)
    assert boot is not None
    # Tokens made before expiry existed keep the lifetime they were made with: none.
    assert (boot.expires_at, boot.max_uses, boot.uses) == (None, None, 0)
    agent = identity.lookup_token(old_agent.token_id)
    assert agent is not None and not agent.agent_disabled and agent.revoked_at is None
    (row,) = identity.list_agents()
    assert (row.agent_id, row.state, row.reset_allowed, row.active_tokens) == (
        "a",
        "active",
        False,
        1,
    )
    with pytest.raises(RequestError) as err:
        identity.enrol(REGISTER.request(agent_id="a"), tokens.TokenKind.BOOTSTRAP, boot.token_id)
    assert err.value.reason == "agent_already_enrolled"
    identity.enrol(REGISTER.request(agent_id="b"), tokens.TokenKind.BOOTSTRAP, boot.token_id)
    assert identity.lookup_token(old_bootstrap.token_id).uses == 1  # type: ignore[union-attr]
    store.close()

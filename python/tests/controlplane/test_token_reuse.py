"""A verified agent token reused from the cache: refused exactly when the full check refuses it.

The control plane keeps, with an agent token's cached row, the token text that
matched it (`token_cache.py`), so a repeated heartbeat skips the parse and
SHA-256. These tests hold that reuse to the rules of the full check: on real
gRPC against a real SQLite file, a token that was checked and reused is refused
right after its agent rotates it (same process), once the cache lapses after a
`token revoke` or `agent disable` from the command line or a rotation through
another server process on the same database, and the moment it expires; a text
that differs from the verified one anywhere is checked in full and refused; the
cache keeps at most its bound of entries.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import grpc
import pytest

from sennet.controlplane import old_path, tokens
from sennet.controlplane.auth import Authenticator
from sennet.controlplane.identity import Identity, TokenRow, utc
from sennet.controlplane.refusals import RequestError
from sennet.controlplane.store import Store
from sennet.controlplane.token_cache import Entry
from sennet.proto.contract import HEARTBEAT
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.controlplane import cli, create_bootstrap_token, heartbeat_request, running

LAPSE_S = 1.5  # --agent-token-cache of the tests that wait for the cache to lapse


def _ok(answer: tuple[grpc.StatusCode, str]) -> None:
    code, details = answer
    assert code == grpc.StatusCode.OK, details


def _set_expiry(db: Path, token: str, expires_at: float) -> None:
    """Give an agent token an expiry, as a row can hold one (the writer may hold the lock)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        with conn:
            conn.execute(
                "UPDATE tokens SET expires_at = ? WHERE token_id = ?",
                (expires_at, token.split(".")[1]),
            )
    finally:
        conn.close()


def test_a_reused_token_is_refused_right_after_its_agent_rotates_it(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    # A cache longer than the test: only the enrolment's own clearing can refuse the old token.
    with running(db, tmp_path, ["--agent-token-cache", "3600"]) as cp:
        agent_id, old = cp.register(bootstrap)
        req = heartbeat_request(agent_id)
        for _ in range(3):  # checked in full once, then reused
            _ok(cp.heartbeat(old, req))
        _, new = cp.register(old, agent_id)
        code, details = cp.heartbeat(old, req)
        assert (code.name, details) == (
            "UNAUTHENTICATED",
            f"authorization: token {old.split('.')[1]} was revoked",
        )
        _ok(cp.heartbeat(new, req))
        assert cp.rejected("Heartbeat", "unauthenticated", "revoked_token") == 1
        assert cp.stop() == 0


def test_revocation_and_disable_from_the_command_line_refuse_a_reused_token_once_it_lapses(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--agent-token-cache", str(LAPSE_S)]) as cp:
        revoked_id, revoked = cp.register(bootstrap)
        disabled_id, disabled = cp.register(bootstrap)
        for _ in range(3):
            _ok(cp.heartbeat(revoked, heartbeat_request(revoked_id)))
            _ok(cp.heartbeat(disabled, heartbeat_request(disabled_id)))
        token_id = revoked.split(".")[1]
        assert cli(db, "token", "revoke", token_id).returncode == 0
        assert cli(db, "agent", "disable", disabled_id).returncode == 0
        time.sleep(LAPSE_S + 0.2)
        code, details = cp.heartbeat(revoked, heartbeat_request(revoked_id))
        assert (code.name, details) == (
            "UNAUTHENTICATED",
            f"authorization: token {token_id} was revoked",
        )
        code, details = cp.heartbeat(disabled, heartbeat_request(disabled_id))
        assert (code.name, details) == (
            "PERMISSION_DENIED",
            f"authorization: agent {disabled_id} is disabled by an operator",
        )
        assert cp.stop() == 0


def test_a_rotation_through_another_server_process_refuses_the_reused_token_once_it_lapses(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    extra = ["--agent-token-cache", str(LAPSE_S)]
    with running(db, tmp_path, extra, name="cp-a") as a, running(db, tmp_path, extra, "cp-b") as b:
        agent_id, old = a.register(bootstrap)
        req = heartbeat_request(agent_id)
        for _ in range(3):  # verified and reused in b
            _ok(b.heartbeat(old, req))
        _, new = a.register(old, agent_id)  # a clears its own cache; b learns from the database
        time.sleep(LAPSE_S + 0.2)
        code, details = b.heartbeat(old, req)
        assert (code.name, details) == (
            "UNAUTHENTICATED",
            f"authorization: token {old.split('.')[1]} was revoked",
        )
        _ok(b.heartbeat(new, req))
        assert a.stop() == 0 and b.stop() == 0


def test_a_reused_token_is_refused_the_moment_it_expires(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--agent-token-cache", "3600"]) as cp:
        agent_id, token = cp.register(bootstrap)  # enrolment cleared the cache
        expires_at = time.time() + 2.0
        _set_expiry(db, token, expires_at)
        req = heartbeat_request(agent_id)
        for _ in range(3):  # the row, expiry included, is read once and then reused
            _ok(cp.heartbeat(token, req))
        time.sleep(max(0.0, expires_at - time.time()) + 0.1)
        code, details = cp.heartbeat(token, req)
        assert (code.name, details) == (
            "UNAUTHENTICATED",
            f"authorization: token {token.split('.')[1]} expired at {utc(expires_at)}",
        )
        assert cp.stop() == 0


def test_a_token_differing_from_the_reused_one_anywhere_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--agent-token-cache", "3600"]) as cp:
        agent_id, token = cp.register(bootstrap)
        req = heartbeat_request(agent_id)
        for _ in range(2):
            _ok(cp.heartbeat(token, req))
        last = "A" if token[-1] != "A" else "B"
        wrong = [
            (token[:-1] + last, "authorization: token is not valid"),  # the right id and prefix
            (token[:20] + token[20:][::-1], "authorization: token is not valid"),
            (token[:-1], "authorization: not a Sennet token"),  # a prefix of the right token
            (token + "A", "authorization: not a Sennet token"),  # the right token, and more
        ]
        for text, message in wrong:
            code, details = cp.heartbeat(text, req)
            assert (code.name, details) == ("UNAUTHENTICATED", message), text
        _ok(cp.heartbeat(token, req))  # the refusals did not disturb the cached one
        assert cp.stop() == 0


# -- the Authenticator on a real SQLite file, without a server ---------------------------------


def _enrolled(tmp_path: Path, agents: int) -> tuple[Identity, list[str]]:
    store = Store(tmp_path / "cp.db")
    store.migrate()
    identity = Identity(store)
    bootstrap = identity.create_bootstrap_token("test")
    texts = [
        identity.enrol(
            pb.RegisterRequest(agent_id=str(uuid.uuid4()), hostname="h"),
            bootstrap.kind,
            bootstrap.token_id,
        ).text
        for _ in range(agents)
    ]
    return identity, texts


def test_the_cache_holds_at_most_its_bound_and_every_token_still_authenticates(
    tmp_path: Path,
) -> None:
    identity, texts = _enrolled(tmp_path, 5)
    auth = Authenticator(identity, cache_s=3600.0, max_entries=3)
    for _ in range(2):
        for text in texts:
            principal = auth.authenticate(HEARTBEAT, f"Bearer {text}")
            assert principal.token_id == text.split(".")[1]
            assert auth.cached <= 3
    assert auth.cached == 3
    with pytest.raises(ValueError, match="max_entries must be >= 1, not 0"):
        Authenticator(identity, cache_s=1.0, max_entries=0)


def test_reuse_skips_the_digest_and_the_old_path_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity, (text,) = _enrolled(tmp_path, 1)
    hashed: list[str] = []
    digest = tokens.digest

    def counting(t: str) -> str:
        hashed.append(t)
        return digest(t)

    monkeypatch.setattr(tokens, "digest", counting)
    auth = Authenticator(identity, cache_s=3600.0)
    first = auth.authenticate(HEARTBEAT, f"Bearer {text}")
    for _ in range(5):
        assert auth.authenticate(HEARTBEAT, f"Bearer {text}") is first
    assert len(hashed) == 1
    monkeypatch.setenv(old_path.ENV, "1")
    old = Authenticator(identity, cache_s=3600.0)
    for _ in range(3):
        assert old.authenticate(HEARTBEAT, f"Bearer {text}") == first
    assert len(hashed) == 4


def test_a_row_read_before_a_clear_is_not_stored_after_it(tmp_path: Path) -> None:
    identity, (text,) = _enrolled(tmp_path, 1)
    auth = Authenticator(identity, cache_s=3600.0)
    row = identity.lookup_token(text.split(".")[1])
    assert row is not None
    stale = Entry(auth._cache.generation, time.monotonic(), row, verified=text)
    auth.forget()  # an enrolment revoked the token between the read and the store
    auth._cache.store(stale)
    assert auth.cached == 0


def test_an_entry_never_shows_its_token(tmp_path: Path) -> None:
    identity, (text,) = _enrolled(tmp_path, 1)
    row = identity.lookup_token(text.split(".")[1])
    assert row is not None
    shown = repr(Entry(0, 0.0, row, verified=text))
    assert shown == f"Entry(token_id={row.token_id!r}, verified=yes)"
    assert text.split(".")[2] not in shown


def test_a_wrong_secret_for_a_reused_id_is_refused_without_a_database_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity, (text,) = _enrolled(tmp_path, 1)
    auth = Authenticator(identity, cache_s=3600.0)
    auth.authenticate(HEARTBEAT, f"Bearer {text}")
    reads: list[str] = []
    lookup = identity.lookup_token

    def counting(token_id: str) -> TokenRow | None:
        reads.append(token_id)
        return lookup(token_id)

    monkeypatch.setattr(identity, "lookup_token", counting)
    forged = text[:-1] + ("A" if text[-1] != "A" else "B")
    with pytest.raises(RequestError) as err:
        auth.authenticate(HEARTBEAT, f"Bearer {forged}")
    assert (err.value.reason, err.value.message) == (
        "unknown_token",
        "authorization: token is not valid",
    )
    assert reads == []
    with pytest.raises(RequestError) as err:  # same length, not ASCII (gRPC cannot send it)
        auth.authenticate(HEARTBEAT, f"Bearer {text[:-1]}é")
    assert (err.value.reason, err.value.message) == (
        "malformed_token",
        "authorization: not a Sennet token",
    )

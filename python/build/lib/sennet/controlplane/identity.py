"""Who may act as an agent: tokens and each agent's standing, kept in the SQLite store.

One module owns the rules of identity, so `auth.py` (per call), enrolment and
the operator's commands (`cli.py`) cannot disagree:

- A bootstrap token enrols *new* agent ids. It carries an expiry and an
  optional use limit; each enrolment spends one use.
- An existing agent id is taken over only by that agent's own valid token
  (rotation), or once after an operator's `agent reset ID`. A bootstrap token
  alone is refused (`agent_already_enrolled`): agent ids are not secret (they
  are on /metrics), so the site-wide bootstrap token must not be a key to them.
- A disabled agent's tokens are revoked and its id cannot enrol again
  (`agent_disabled`) until `agent enable ID`, which also allows one enrolment.

The standing check and the write are one `BEGIN IMMEDIATE` transaction, so a
use limit holds under concurrent enrolments and an operator's disable cannot
slip between check and write. That is why `enrol` raises `RequestError`
itself: the refusal is decided inside the transaction.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from dataclasses import dataclass

from sennet.common.errors import UserError
from sennet.controlplane import tokens
from sennet.controlplane.refusals import Code, RequestError
from sennet.controlplane.store import Store
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

DEFAULT_BOOTSTRAP_LIFETIME_S = 24 * 3600.0  # `token create` without --expires-in


class AgentState(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


@dataclass(frozen=True)
class TokenRow:
    token_id: str
    kind: tokens.TokenKind
    digest: str
    agent_id: str | None
    name: str
    created_at: float
    revoked_at: float | None
    last_used_at: float | None
    expires_at: float | None  # None: never
    max_uses: int | None  # None: unlimited
    uses: int
    agent_disabled: bool  # an agent token whose agent an operator disabled


@dataclass(frozen=True)
class AgentRow:
    agent_id: str
    hostname: str
    state: AgentState
    reset_allowed: bool  # the next bootstrap enrolment of this id is allowed (once)
    registered_at: float
    last_heartbeat_at: float | None
    active_tokens: int


def utc(ts: float) -> str:
    """A timestamp as operators read it in messages and listings."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def refusal(row: TokenRow, now: float) -> RequestError | None:
    """Why a token whose secret matched may not be used now, or None when it may."""
    if row.agent_disabled:
        return RequestError(
            Code.PERMISSION_DENIED,
            f"authorization: agent {row.agent_id} is disabled by an operator",
            "agent_disabled",
        )
    if row.revoked_at is not None:
        return RequestError(
            Code.UNAUTHENTICATED,
            f"authorization: token {row.token_id} was revoked",
            "revoked_token",
        )
    if row.expires_at is not None and now >= row.expires_at:
        return RequestError(
            Code.UNAUTHENTICATED,
            f"authorization: token {row.token_id} expired at {utc(row.expires_at)}",
            "expired_token",
        )
    if row.max_uses is not None and row.uses >= row.max_uses:
        return RequestError(
            Code.UNAUTHENTICATED,
            f"authorization: token {row.token_id} has been used {row.uses} of {row.max_uses} times",
            "token_used_up",
        )
    return None


_TOKEN_COLUMNS = (
    "SELECT t.token_id, t.kind, t.digest, t.agent_id, t.name, t.created_at, t.revoked_at,"
    " t.last_used_at, t.expires_at, t.max_uses, t.uses, coalesce(a.state = 'disabled', 0)"
    " FROM tokens t LEFT JOIN agents a ON t.kind = 'agent' AND a.agent_id = t.agent_id"
)


class Identity:
    """Tokens and agent standing in one `Store` (shares its per-thread connections)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _conn(self) -> sqlite3.Connection:
        return self._store.local()

    # -- tokens -----------------------------------------------------------------------

    def create_bootstrap_token(
        self,
        name: str,
        lifetime_s: float | None = DEFAULT_BOOTSTRAP_LIFETIME_S,
        max_uses: int | None = None,
    ) -> tokens.ParsedToken:
        """A new bootstrap token; `lifetime_s=None` never expires, `max_uses=None` is unlimited."""
        token = tokens.new_token(tokens.TokenKind.BOOTSTRAP)
        now = time.time()
        self._conn().execute(
            "INSERT INTO tokens (token_id, kind, digest, name, created_at, expires_at, max_uses)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                token.token_id,
                token.kind.value,
                tokens.digest(token.text),
                name,
                now,
                None if lifetime_s is None else now + lifetime_s,
                max_uses,
            ),
        )
        return token

    def list_tokens(self, kind: tokens.TokenKind | None = None) -> list[TokenRow]:
        sql = _TOKEN_COLUMNS
        args: tuple[str, ...] = ()
        if kind is not None:
            sql += " WHERE t.kind = ?"
            args = (kind.value,)
        rows = self._conn().execute(sql + " ORDER BY t.created_at, t.token_id", args).fetchall()
        return [_token_row(r) for r in rows]

    def lookup_token(self, token_id: str) -> TokenRow | None:
        row = self._conn().execute(_TOKEN_COLUMNS + " WHERE t.token_id = ?", (token_id,)).fetchone()
        return _token_row(row) if row else None

    def revoke_token(self, token_id: str) -> bool:
        """Revoke by id; False when no unrevoked token has that id."""
        cur = self._conn().execute(
            "UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
            (time.time(), token_id),
        )
        return cur.rowcount == 1

    # -- enrolment --------------------------------------------------------------------

    def enrol(
        self, req: pb.RegisterRequest, kind: tokens.TokenKind, presented_id: str
    ) -> tokens.ParsedToken:
        """Record the agent and issue its token, revoking any token it had before.

        `kind`/`presented_id` name the token the caller authenticated with: a
        bootstrap token (a new id, or one an operator reset) or the agent's own
        token (rotation; the caller checked it belongs to `req.agent_id`).
        Raises `RequestError` when the agent's standing forbids it.
        """
        token = tokens.new_token(tokens.TokenKind.AGENT)
        now = time.time()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._admit(conn, req.agent_id, kind, presented_id, now)
            conn.execute(
                "INSERT INTO agents"
                " (agent_id, hostname, agent_version, kernel_version, registered_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET"
                " hostname = excluded.hostname, agent_version = excluded.agent_version,"
                " kernel_version = excluded.kernel_version, reset_allowed = 0",
                (req.agent_id, req.hostname, req.agent_version, req.kernel_version, now),
            )
            conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE agent_id = ? AND revoked_at IS NULL",
                (now, req.agent_id),
            )
            how = "enrolled with" if kind is tokens.TokenKind.BOOTSTRAP else "rotated from"
            conn.execute(
                "INSERT INTO tokens (token_id, kind, digest, agent_id, name, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    token.token_id,
                    token.kind.value,
                    tokens.digest(token.text),
                    req.agent_id,
                    f"{how} {presented_id}",
                    now,
                ),
            )
            conn.execute(
                "UPDATE tokens SET last_used_at = ?, uses = uses + 1 WHERE token_id = ?",
                (now, presented_id),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return token

    def _admit(
        self,
        conn: sqlite3.Connection,
        agent_id: str,
        kind: tokens.TokenKind,
        presented_id: str,
        now: float,
    ) -> None:
        """In the enrolment transaction: refuse unless the presented token may enrol `agent_id`."""
        row = conn.execute(_TOKEN_COLUMNS + " WHERE t.token_id = ?", (presented_id,)).fetchone()
        if row is None:  # deleted between authentication and now
            raise RequestError(
                Code.UNAUTHENTICATED, "authorization: token is not valid", "unknown_token"
            )
        refused = refusal(_token_row(row), now)  # again: a use limit must hold under races
        if refused is not None:
            raise refused
        agent = conn.execute(
            "SELECT state, reset_allowed FROM agents WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        if agent is None or kind is tokens.TokenKind.AGENT:
            return
        if agent[0] == AgentState.DISABLED:
            raise RequestError(
                Code.PERMISSION_DENIED,
                f"agent_id: agent {agent_id} is disabled by an operator",
                "agent_disabled",
            )
        if not agent[1]:
            raise RequestError(
                Code.PERMISSION_DENIED,
                f"agent_id: agent {agent_id} is already enrolled; a bootstrap token cannot "
                "enrol it again until an operator runs `sennet-controlplane agent reset "
                f"{agent_id}` (or the agent rotates with its own token)",
                "agent_already_enrolled",
            )

    # -- agents (the operator's commands) ---------------------------------------------

    def list_agents(self) -> list[AgentRow]:
        rows = self._conn().execute(
            "SELECT a.agent_id, a.hostname, a.state, a.reset_allowed, a.registered_at,"
            " a.last_heartbeat_at, (SELECT count(*) FROM tokens t WHERE t.agent_id = a.agent_id"
            " AND t.revoked_at IS NULL) FROM agents a ORDER BY a.registered_at, a.agent_id"
        )
        return [
            AgentRow(
                agent_id=str(r[0]),
                hostname=str(r[1]),
                state=AgentState(str(r[2])),
                reset_allowed=bool(r[3]),
                registered_at=float(r[4]),
                last_heartbeat_at=None if r[5] is None else float(r[5]),
                active_tokens=int(r[6]),
            )
            for r in rows
        ]

    def reset_agent(self, agent_id: str) -> None:
        """Allow the next bootstrap enrolment of `agent_id`, once (its current token keeps
        working until then; that enrolment revokes it)."""
        self._set(agent_id, "reset_allowed = 1", only_active=True)

    def disable_agent(self, agent_id: str) -> int:
        """Revoke the agent's tokens and refuse its re-enrolment; returns tokens revoked."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._set(agent_id, "state = 'disabled', reset_allowed = 0")
            cur = conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE agent_id = ? AND revoked_at IS NULL",
                (time.time(), agent_id),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return cur.rowcount

    def enable_agent(self, agent_id: str) -> None:
        """Undo `disable`: the agent may enrol again with a bootstrap token, once (its old
        tokens stay revoked)."""
        self._set(agent_id, "state = 'active', reset_allowed = 1")

    def _set(self, agent_id: str, assignments: str, *, only_active: bool = False) -> None:
        conn = self._conn()
        row = conn.execute("SELECT state FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        if row is None:
            raise UserError(
                f"no agent with id {agent_id}",
                hint="`sennet-controlplane agent list` shows the ids",
            )
        if only_active and row[0] == AgentState.DISABLED:
            raise UserError(
                f"agent {agent_id} is disabled",
                hint=f"`sennet-controlplane agent enable {agent_id}` allows it to enrol again",
            )
        conn.execute(f"UPDATE agents SET {assignments} WHERE agent_id = ?", (agent_id,))


def _token_row(row: tuple[object, ...]) -> TokenRow:
    def opt_float(v: object) -> float | None:
        return None if v is None else float(v)  # type: ignore[arg-type]

    return TokenRow(
        token_id=str(row[0]),
        kind=tokens.TokenKind(str(row[1])),
        digest=str(row[2]),
        agent_id=None if row[3] is None else str(row[3]),
        name=str(row[4]),
        created_at=float(row[5]),  # type: ignore[arg-type]
        revoked_at=opt_float(row[6]),
        last_used_at=opt_float(row[7]),
        expires_at=opt_float(row[8]),
        max_uses=None if row[9] is None else int(row[9]),  # type: ignore[call-overload]
        uses=int(row[10]),  # type: ignore[call-overload]
        agent_disabled=bool(row[11]),
    )

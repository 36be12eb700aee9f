"""Authentication: a bearer token to a principal, for the method being called.

Register takes a bootstrap token (enrol a new agent id) or the agent's own
token (rotate it); Heartbeat needs the agent's own token. Every transport
reaches this through `calls.py`, which authenticates before it decodes or runs
anything, so no transport can forget the check; the service still decides what
the principal may do (an agent token may only act for its own agent id, checked
in `sentinel_service.py`; whether an id may be enrolled, in `identity.py`).

Errors: a missing, malformed, unknown, revoked, expired or used-up token is
UNAUTHENTICATED; a valid token of the wrong kind, another agent's, or one of an
agent an operator disabled, is PERMISSION_DENIED. Every refusal is counted by
reason.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from sennet.controlplane import identity, tokens
from sennet.controlplane.identity import Identity, TokenRow
from sennet.controlplane.refusals import Code, RequestError
from sennet.proto.contract import BY_NAME, HEARTBEAT, REGISTER, Method

_ARTICLE = {tokens.TokenKind.BOOTSTRAP: "a", tokens.TokenKind.AGENT: "an"}
# The token kinds each method accepts; the first is the one named when another is presented.
ACCEPTED_KINDS = {
    REGISTER.name: (tokens.TokenKind.BOOTSTRAP, tokens.TokenKind.AGENT),
    HEARTBEAT.name: (tokens.TokenKind.AGENT,),
}
if set(ACCEPTED_KINDS) != set(BY_NAME):
    raise TypeError("auth.py does not say which token every method of the contract needs")


@dataclass(frozen=True)
class Principal:
    kind: tokens.TokenKind
    token_id: str
    agent_id: str | None  # set for agent tokens


class Authenticator:
    """Checks bearer tokens against the store.

    Active agent-token rows are cached for `cache_s` seconds (the
    `agent_token_cache` setting, default 1 s), because a
    database read per heartbeat on the event loop contends with the writer.
    The cost: a token revoked, or an agent disabled, from the command line
    (another process) stops working within `cache_s`; enrolment in this process
    clears the cache at once. Bootstrap tokens are never cached (enrolment is
    rare, and their expiry and use count must be read fresh).
    """

    def __init__(self, identity: Identity, cache_s: float) -> None:
        self._identity = identity
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, TokenRow]] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Drop cached rows (an agent re-enrolled: its previous token was just revoked)."""
        with self._lock:
            self._cache.clear()

    def _lookup(self, token_id: str) -> TokenRow | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(token_id)
        if hit is not None and now - hit[0] < self._cache_s:
            return hit[1]
        row = self._identity.lookup_token(token_id)
        if (
            row is not None
            and row.kind == tokens.TokenKind.AGENT
            and identity.refusal(row, time.time()) is None
        ):
            with self._lock:
                if len(self._cache) > 100_000:  # bounded: forged ids never enter it anyway
                    self._cache.clear()
                self._cache[token_id] = (now, row)
        return row

    def authenticate(self, method: Method[Any, Any], authorization: str | None) -> Principal:
        """The principal behind `authorization` for `method`, or a RequestError saying why not."""
        accepted = ACCEPTED_KINDS[method.name]
        text = tokens.bearer(authorization)
        if text is None:
            raise RequestError(
                Code.UNAUTHENTICATED,
                "authorization: missing; send 'authorization: Bearer <token>'",
                "missing_token",
            )
        parsed = tokens.parse(text)
        if parsed is None:
            raise RequestError(
                Code.UNAUTHENTICATED, "authorization: not a Sennet token", "malformed_token"
            )
        row = self._lookup(parsed.token_id)
        if row is None or not tokens.matches(text, row.digest):
            raise RequestError(
                Code.UNAUTHENTICATED, "authorization: token is not valid", "unknown_token"
            )
        refused = identity.refusal(row, time.time())
        if refused is not None:
            raise refused
        if row.kind not in accepted:
            want = accepted[0]
            raise RequestError(
                Code.PERMISSION_DENIED,
                f"authorization: {method.name} needs {_ARTICLE[want]} {want} token, "
                f"not {_ARTICLE[row.kind]} {row.kind} token",
                "wrong_token_kind",
            )
        return Principal(row.kind, row.token_id, row.agent_id)

"""Authentication: a bearer token to a principal, for the method being called.

Register needs a bootstrap token; Heartbeat needs the agent's own token. Every
transport reaches this through `calls.py`, which authenticates before it
decodes or runs anything, so no transport can forget the check; the service
still decides what the principal may do (an agent token may only report for
its own agent id, checked in `sentinel_service.py`).

Errors: a missing, malformed, unknown or revoked token is UNAUTHENTICATED;
a valid token of the wrong kind, or another agent's, is PERMISSION_DENIED.
Every refusal is counted by reason.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from sennet.controlplane import tokens
from sennet.controlplane.refusals import Code, RequestError
from sennet.controlplane.store import Store, TokenRow
from sennet.proto.contract import BY_NAME, HEARTBEAT, REGISTER, Method

_ARTICLE = {tokens.TokenKind.BOOTSTRAP: "a", tokens.TokenKind.AGENT: "an"}
REQUIRED_KIND = {REGISTER.name: tokens.TokenKind.BOOTSTRAP, HEARTBEAT.name: tokens.TokenKind.AGENT}
if set(REQUIRED_KIND) != set(BY_NAME):
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
    The cost: a token revoked from the command line (another process) stops
    working within `cache_s`; enrolment in this process clears the cache at
    once. Bootstrap tokens are never cached (enrolment is rare).
    """

    def __init__(self, store: Store, cache_s: float) -> None:
        self._store = store
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
        row = self._store.lookup_token(token_id)
        if row is not None and row.kind == tokens.TokenKind.AGENT and row.revoked_at is None:
            with self._lock:
                if len(self._cache) > 100_000:  # bounded: forged ids never enter it anyway
                    self._cache.clear()
                self._cache[token_id] = (now, row)
        return row

    def authenticate(self, method: Method[Any, Any], authorization: str | None) -> Principal:
        """The principal behind `authorization` for `method`, or a RequestError saying why not."""
        want = REQUIRED_KIND[method.name]
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
        if row.revoked_at is not None:
            raise RequestError(
                Code.UNAUTHENTICATED,
                f"authorization: token {row.token_id} was revoked",
                "revoked_token",
            )
        if row.kind != want:
            raise RequestError(
                Code.PERMISSION_DENIED,
                f"authorization: {method.name} needs {_ARTICLE[want]} {want} token, "
                f"not {_ARTICLE[row.kind]} {row.kind} token",
                "wrong_token_kind",
            )
        return Principal(row.kind, row.token_id, row.agent_id)

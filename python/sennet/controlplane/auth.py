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

import time
from typing import Any

from sennet.controlplane import identity, old_path, tokens
from sennet.controlplane.identity import Identity, TokenRow
from sennet.controlplane.refusals import Code, RequestError
from sennet.controlplane.token_cache import DEFAULT_MAX_ENTRIES, Entry, TokenCache
from sennet.controlplane.token_cache import Principal as Principal
from sennet.proto.contract import BY_NAME, HEARTBEAT, REGISTER, Method

_ARTICLE = {tokens.TokenKind.BOOTSTRAP: "a", tokens.TokenKind.AGENT: "an"}
# The token kinds each method accepts; the first is the one named when another is presented.
ACCEPTED_KINDS = {
    REGISTER.name: (tokens.TokenKind.BOOTSTRAP, tokens.TokenKind.AGENT),
    HEARTBEAT.name: (tokens.TokenKind.AGENT,),
}
if set(ACCEPTED_KINDS) != set(BY_NAME):
    raise TypeError("auth.py does not say which token every method of the contract needs")


class Authenticator:
    """Checks bearer tokens against the store.

    Active agent-token rows are cached for `cache_s` seconds (the
    `agent_token_cache` setting, default 1 s), because a
    database read per heartbeat on the event loop contends with the writer.
    The cost: a token revoked, or an agent disabled, from the command line
    (another process) stops working within `cache_s`; enrolment in this process
    clears the cache at once. Bootstrap tokens are never cached (enrolment is
    rare, and their expiry and use count must be read fresh). A cached row also
    keeps the token text that matched it, so the same token presented again
    within `cache_s` skips the parse and SHA-256 (`token_cache.py` says why
    that refuses exactly what the full check would).
    """

    def __init__(
        self, identity: Identity, cache_s: float, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self._identity = identity
        self._cache = TokenCache(cache_s, max_entries)
        # SENNET_CONTROLPLANE_OLD_PATH=1: every call parses and hashes, as before (benchmarks).
        self._reuse_verified = not old_path.selected()

    @property
    def cached(self) -> int:
        """Token ids with a cached row (bounded by `max_entries`)."""
        return len(self._cache)

    def forget(self) -> None:
        """Drop cached rows (an agent re-enrolled: its previous token was just revoked)."""
        self._cache.clear()

    def _lookup(self, token_id: str) -> tuple[TokenRow | None, Entry | None]:
        """The token's row, and the cache entry holding it (None when it may not be cached)."""
        entry = self._cache.fresh(token_id)
        if entry is not None:
            return entry.row, entry
        generation, read_at = self._cache.generation, time.monotonic()
        row = self._identity.lookup_token(token_id)
        if (
            row is not None
            and row.kind == tokens.TokenKind.AGENT
            and identity.refusal(row, time.time()) is None
        ):
            entry = Entry(generation, read_at, row)
            self._cache.store(entry)  # bounded: forged ids never enter it anyway
            return row, entry
        return row, None

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
        if self._reuse_verified:
            reused = self._cache.reuse(text)
            if reused is not None and reused.kind in accepted:
                return reused
        parsed = tokens.parse(text)
        if parsed is None:
            raise RequestError(
                Code.UNAUTHENTICATED, "authorization: not a Sennet token", "malformed_token"
            )
        row, entry = self._lookup(parsed.token_id)
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
        if entry is None:
            return Principal(row.kind, row.token_id, row.agent_id)
        if self._reuse_verified and entry.verified is None:
            # The same row, read at the same time: it lapses when the row would have.
            entry = Entry(entry.generation, entry.read_at, row, verified=text)
            self._cache.store(entry)
        return entry.principal

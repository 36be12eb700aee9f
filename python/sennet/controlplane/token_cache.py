"""The agent-token cache: a token's row, and the token text already checked against it.

A heartbeat presents the same agent token every few seconds. Checking it in
full (the token's regular expression, SHA-256 of the whole token, the
constant-time compare against the stored digest, a new `Principal`) runs on
the event loop for every call, and measured over gRPC it costs far more there
than in a loop of its own. So besides the token's row, an entry keeps the
token text that was found to match that row's digest, and the principal it
gave: a call presenting the same text again is answered by one constant-time
comparison of the texts (`hmac.compare_digest`, as the digest compare it
replaces) and a clock read for the token's own expiry.

What this does not change: an entry lives `cache_s` seconds from its row's
database read, whether or not a text was verified against it, so a token
revoked, an agent disabled or a token rotated from another process (the
command line, another server process on the database) stops working within
`cache_s` exactly as before; `clear()` (an enrolment in this process) drops
every entry at once; an expiry is checked on every call against the wall
clock. Only an active agent token's row enters, so its other reasons for
refusal (revoked, disabled, used up) cannot become true without a new read.

The text is kept in memory only, for as long as its entry: `Entry.__repr__`
leaves it out so a log line or traceback cannot print it.
"""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass

from sennet.controlplane import tokens
from sennet.controlplane.identity import TokenRow

DEFAULT_MAX_ENTRIES = 100_000  # far above a fleet's live agent tokens


@dataclass(frozen=True)
class Principal:
    kind: tokens.TokenKind
    token_id: str
    agent_id: str | None  # set for agent tokens


class Entry:
    """One token id's cached row and, once a presented token matched it, that text."""

    __slots__ = ("expires_at", "generation", "principal", "read_at", "row", "verified")

    def __init__(
        self, generation: int, read_at: float, row: TokenRow, verified: str | None = None
    ) -> None:
        self.generation = generation  # `TokenCache.generation` before the row was read
        self.read_at = read_at  # time.monotonic() of the row's database read
        self.row = row
        self.verified = verified  # the token text whose SHA-256 matched row.digest
        self.expires_at = row.expires_at  # wall clock, checked on every use
        self.principal = Principal(row.kind, row.token_id, row.agent_id)

    def __repr__(self) -> str:
        verified = "yes" if self.verified is not None else "no"
        return f"Entry(token_id={self.row.token_id!r}, verified={verified})"


class TokenCache:
    """Entries by token id, each for `cache_s` seconds; at most `max_entries` of them.

    Reads take no lock (a dict lookup is atomic under the GIL and entries are
    replaced, never changed); writes do, since the HTTP server's threads
    authenticate too. When full, the entry added first makes room. Each
    `clear()` starts a new generation, and an entry whose row was read in an
    earlier one is not stored: a row read just before an enrolment revoked its
    token cannot come back after the enrolment cleared the cache.
    """

    def __init__(self, cache_s: float, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"TokenCache: max_entries must be >= 1, not {max_entries}")
        self._cache_s = cache_s
        self._max = max_entries
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries.clear()

    def fresh(self, token_id: str) -> Entry | None:
        """The entry for `token_id` if its row was read less than `cache_s` ago."""
        entry = self._entries.get(token_id)
        if entry is None or time.monotonic() - entry.read_at >= self._cache_s:
            return None
        return entry

    def reuse(self, text: str) -> Principal | None:
        """The principal of `text` if it is the very text a fresh entry verified and its
        token has not expired; None sends the caller to the full check."""
        if len(text) != tokens.TOKEN_LENGTH or not text.isascii():
            return None
        entry = self.fresh(tokens.token_id_of(text))
        if entry is None or entry.verified is None:
            return None
        if not hmac.compare_digest(entry.verified, text):
            return None
        if entry.expires_at is not None and time.time() >= entry.expires_at:
            return None  # the full check refuses it with the expiry's own message
        return entry.principal

    def store(self, entry: Entry) -> None:
        with self._lock:
            if entry.generation != self.generation:
                return
            if entry.row.token_id not in self._entries and len(self._entries) >= self._max:
                del self._entries[next(iter(self._entries))]
            self._entries[entry.row.token_id] = entry

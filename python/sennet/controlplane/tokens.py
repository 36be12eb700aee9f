"""Token format, generation and hashing (pure functions; storage lives in `store.py`).

A token reads `sb.<id>.<secret>` (bootstrap) or `sa.<id>.<secret>` (agent).
The id is public (it names the token in `token list`/`revoke` and finds its
row); the secret is 256 random bits. Only SHA-256 of the whole token is
stored. A slow password hash buys nothing for a 256-bit random secret and
would cost CPU on every heartbeat. Comparison is `hmac.compare_digest`, so a
timing probe learns nothing about the stored hash.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass


class TokenKind(enum.StrEnum):
    BOOTSTRAP = "bootstrap"
    AGENT = "agent"


_PREFIX = {TokenKind.BOOTSTRAP: "sb", TokenKind.AGENT: "sa"}
_KIND_BY_PREFIX = {v: k for k, v in _PREFIX.items()}
_TOKEN_RE = re.compile(r"^(sb|sa)\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
TOKEN_LENGTH = 63  # every token `_TOKEN_RE` accepts: 2 + 1 + 16 + 1 + 43


@dataclass(frozen=True)
class ParsedToken:
    kind: TokenKind
    token_id: str
    text: str


def new_token(kind: TokenKind) -> ParsedToken:
    """A fresh random token of `kind`."""
    token_id = secrets.token_hex(8)
    text = f"{_PREFIX[kind]}.{token_id}.{secrets.token_urlsafe(32)}"
    return ParsedToken(kind, token_id, text)


def parse(text: str) -> ParsedToken | None:
    """Split a presented token into kind and id; None when it is not shaped like one of ours."""
    m = _TOKEN_RE.match(text)
    if m is None:
        return None
    return ParsedToken(_KIND_BY_PREFIX[m.group(1)], m.group(2), text)


def token_id_of(text: str) -> str:
    """The id part of a `TOKEN_LENGTH` text, without checking its shape (`parse` does):
    only for finding a cache entry, whose verified text is then compared in full."""
    return text[3:19]


def digest(text: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(text.encode()).hexdigest()


def matches(text: str, stored_digest: str) -> bool:
    """Constant-time check of a presented token against a stored digest."""
    return hmac.compare_digest(digest(text).encode(), stored_digest.encode())


def bearer(authorization: str | None) -> str | None:
    """The token from an `authorization: Bearer <token>` value, or None when absent or malformed."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()

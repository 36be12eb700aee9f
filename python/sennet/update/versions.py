"""Dotted numeric versions ("0.2.0"): parsed strictly, compared as integer tuples.

Versions decide downgrade refusals and appear in ESP file names, so anything
beyond digits and dots (a letter, a '+', a '-') is rejected rather than guessed at.
"""

from __future__ import annotations

import re

_VERSION = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,9}){0,3}$")


def parse(text: str) -> tuple[int, ...]:
    """The version as integers, padded to four parts; ValueError when not a plain dotted version."""
    if not _VERSION.match(text):
        raise ValueError(f"not a dotted numeric version: {text!r}")
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


def valid(text: str) -> bool:
    return bool(_VERSION.match(text))

"""One error type for operator mistakes, so every command prints one clear line.

A `UserError` is something the person running Sennet can fix (a bad config
value, a missing interface, no permission). Command-line entry points catch it
and print `error: <message>` plus an optional hint, without a stack trace.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the operator can act on; `hint` says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message

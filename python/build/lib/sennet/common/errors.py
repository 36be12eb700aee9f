"""One error type for operator mistakes and one exit-code rule for every Sennet command.

A `UserError` is something the person running Sennet can fix (a bad config
value, a missing interface, no permission, a tampered input). Every entry point
(`sennet-agent`, `sennet-controlplane`, `python -m sennet_image`) runs through
`run_main`, which prints `PROG: error: <message>` plus an optional hint and
exits 2, without a stack trace. Ctrl-C exits 130. Anything else is a bug and
keeps its traceback (exit 1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and reports a negative result (a check failed)
EXIT_USER_ERROR = 2  # an operator mistake: one line on stderr
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


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


def run_main(prog: str, main: Callable[[], int]) -> int:
    """Run a command's body under the one exit-code rule shared by every Sennet command."""
    try:
        return main()
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

"""The one subprocess wrapper: argv lists, no shell, failures explained."""

from __future__ import annotations

import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence

from sennet.common.errors import UserError


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command, capture its output, and on failure raise with the command line and stderr."""
    try:
        result = subprocess.run(
            list(argv),
            input=input_bytes,
            stdin=None if input_bytes is not None else subprocess.DEVNULL,
            capture_output=True,
            env=dict(env) if env is not None else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise UserError(f"command not found: {argv[0]}", hint="is it installed?") from exc
    if check and result.returncode != 0:
        code = result.returncode
        why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        stderr = result.stderr.decode(errors="replace").strip()
        raise UserError(f"`{shlex.join(argv)}` failed ({why})" + (f": {stderr}" if stderr else ""))
    return result

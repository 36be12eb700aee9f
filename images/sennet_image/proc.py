"""The image package's one subprocess wrapper, fatal-error path and progress log.

Modelled on mkosi's `run()`/`die()`: argv lists only, stdin closed, a
minimal environment (so the host's locale or TZ cannot leak into an
artefact), and a failure that names the command and why it failed. The
error is Sennet's shared `UserError`, so `sennet_image` exits by the same
rule as every other Sennet command (`sennet.common.errors.run_main`).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from sennet.common.errors import UserError

SOURCE_DATE_EPOCH_DEFAULT = 1700000000


def die(message: str, hint: str | None = None) -> NoReturn:
    """Stop with one clear line: something the operator can fix (a missing tool, a bad
    pin, a tampered input). Raised, so callers and tests can catch it."""
    raise UserError(message, hint)


def source_date_epoch() -> int:
    """The one timestamp every artefact carries (SOURCE_DATE_EPOCH, else a fixed default)."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(raw) if raw.isdigit() else SOURCE_DATE_EPOCH_DEFAULT


# Set in the environment, every build tool runs inside this pinned build root (see
# buildroot.py): a root directory, or its stamp file (a Bazel action's input).
BUILD_ROOT_ENV = "SENNET_BUILD_ROOT"
# Enter the root: its /etc then its /usr over the host's in a private mount namespace
# (/etc first: `mount` itself comes from the host's /usr), then exec the tool from it.
_ENTER = 'mount --bind "$0/etc" /etc && mount --bind "$0/usr" /usr && exec "$@"'


def build_root() -> Path | None:
    """The build root the tools run in, if one is set (SENNET_BUILD_ROOT)."""
    raw = os.environ.get(BUILD_ROOT_ENV, "")
    if not raw:
        return None
    path = Path(raw).resolve()
    return path.parent if path.is_file() else path


def enter_argv(root: Path, argv: Sequence[str]) -> list[str]:
    """`argv` run inside `root`. As root only a mount namespace is needed; anyone else
    needs unprivileged user namespaces (`unshare --map-root-user`)."""
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.append("--map-root-user")
    return [*unshare, "/bin/sh", "-c", _ENTER, str(root), *argv]


def build_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A small, fixed environment for build tools: no locale, UTC, the fixed epoch."""
    env = {
        # Fixed, as in .bazelrc: the same host tools whether Bazel or a person runs the build.
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(source_date_epoch()),
    }
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input_bytes: bytes | None = None,
    capture: bool = True,
    check: bool = True,
    host: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command; on failure raise UserError with the command line, the cause and stderr.

    With a build root set, the command runs inside it, unless `host` (the bootstrap:
    unpacking the root itself, or a step that needs the host, such as booting QEMU)."""
    shown = [str(a) for a in argv]
    root = None if host else build_root()
    args = shown if root is None else enter_argv(root, shown)
    if os.environ.get("SENNET_IMAGE_DEBUG"):
        log("run", cmd=shlex.join(args))
    try:
        result = subprocess.run(
            args,
            input=input_bytes,
            stdin=None if input_bytes is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=build_env(env),
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError:
        die(f"command not found: {shown[0]}", hint="install the host tools listed in images/README")
    if check and result.returncode != 0:
        code = result.returncode
        why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        err = (result.stderr or b"").decode(errors="replace").strip()
        where = "" if root is None else f" in the build root {root}"
        die(f"`{shlex.join(shown)}`{where} failed ({why})" + (f": {err[-2000:]}" if err else ""))
    return result


def log(event: str, **fields: object) -> None:
    """One structured progress line on stderr (key=value, as the agent logs)."""
    parts = [f"event={event}"] + [f"{k}={v}" for k, v in fields.items()]
    print(" ".join(parts), file=sys.stderr, flush=True)


@contextmanager
def step(name: str, **fields: object) -> Iterator[None]:
    """Log a long step's start and its duration, so a slow build shows where time goes."""
    start = time.monotonic()
    log("step_start", step=name, **fields)
    yield
    log("step_done", step=name, seconds=f"{time.monotonic() - start:.2f}")

"""A Sennet command run as a real child process, its output kept in a log file.

The control plane and the agent are always tested as the processes operators
run, never as objects in the test's own interpreter: signals, exit codes,
ready files and log lines are part of what is checked. This owns the child:
start, wait on the one retry primitive for a log line or a file, a graceful
stop (SIGTERM, then kill as the fallback, which is itself a failure), and the
log printed when the code around it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sennet.common.retry import retry
from sennet.testing.errors import HarnessError, TestFailed

PYTHON = sys.executable


class LoggedProcess:
    """One child process; each start appends its output to `log_path`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> LoggedProcess:
        with self.log_path.open("ab") as out:
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                )
            except OSError as exc:
                raise HarnessError(f"cannot start {self.name}: {exc}") from exc
        self.starts += 1
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _check_alive(self, waiting_for: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise TestFailed(
                f"{self.name} exited ({self.proc.returncode}) before {waiting_for}:\n{self.log()}"
            )

    def wait_for_log(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        """Until `text` appears `count` times in the log (e.g. `event=agent_ready`)."""

        def attempt(last: bool) -> bool | None:
            if self.log().count(text) >= count:
                return True
            self._check_alive(repr(text))
            return None

        try:
            retry(attempt, timeout, interval=0.1, what=f"{self.name} log line {text!r}")
        except TimeoutError as exc:
            raise TestFailed(f"{exc}:\n{self.log()}") from None

    def wait_for_json(self, path: Path, timeout: float = 30.0) -> dict[str, Any]:
        """Until the process has written `path` (written atomically, so never half)."""

        def attempt(last: bool) -> dict[str, Any] | None:
            if path.exists():
                data: dict[str, Any] = json.loads(path.read_text())
                return data
            self._check_alive(f"writing {path.name}")
            return None

        try:
            return retry(attempt, timeout, interval=0.05, what=f"{self.name}: {path.name}")
        except TimeoutError as exc:
            raise TestFailed(f"{exc}:\n{self.log()}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal and reap; the exit status (negative: killed by that signal).

        A process that ignores SIGTERM for `timeout` seconds is killed and the
        test fails: a graceful stop is part of the product.
        """
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise TestFailed(
                    f"{self.name} ignored {signal.Signals(sig).name} for {timeout} s:\n{self.log()}"
                ) from None
        return proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def owned(process: LoggedProcess) -> Iterator[LoggedProcess]:
    """Kill the process on every exit; print its log when the body failed."""
    try:
        yield process
    except BaseException:
        print(f"--- {process.name} log ({process.log_path}) ---\n{process.log()}")
        raise
    finally:
        process.kill()

"""Run the real `sennet-agent` command in a test-owned namespace, and stop it on every exit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sennet.common.retry import retry

AGENT = [sys.executable, "-m", "sennet.agent.cli"]


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        def attempt(last: bool) -> bool | None:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"agent exited ({self.proc.returncode}) before {text!r}:\n{self.log()}"
                )
            if last:
                print(self.log())
            return None

        retry(attempt, timeout, what=f"agent log line {text!r}")

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"agent ignored SIGTERM for {timeout} s:\n{self.log()}"
                ) from None
        return self.proc.returncode


def in_ns(netns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


@contextlib.contextmanager
def agent(netns: str, args: list[str], log_path: Path) -> Iterator[AgentProcess]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            in_ns(netns, [*AGENT, "run", *args]), stdout=out, stderr=subprocess.STDOUT, env=env
        )
    handle = AgentProcess(proc, log_path)
    try:
        yield handle
    except BaseException:
        print(f"--- agent log ({log_path}) ---\n{handle.log()}")
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_cli(netns: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        in_ns(netns, [*AGENT, *args]), capture_output=True, text=True, check=False
    )


def status(netns: str, pin_dir: Path) -> dict[str, Any]:
    result = run_cli(netns, ["status", "--json", "--pin-dir", str(pin_dir)])
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data

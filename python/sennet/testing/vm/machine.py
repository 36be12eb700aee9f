"""A booted appliance VM whose verbs read as assertions.

`succeed(cmd)` returns the output or raises TestFailed naming the command and
its exit status; `fail(cmd)` the reverse; `execute(cmd)` gives the raw
(status, output). Every `wait_*` verb is a predicate plus the one retry
primitive. The console is copied to a log file as it arrives, and every step is
logged with its duration. Commands reach the guest over SSH (the test variant's
dropbear), which is also how testinfra reaches it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sennet.common.log import event
from sennet.common.retry import RetryTimeout, retry
from sennet.testing.errors import HarnessError, TestFailed

log = logging.getLogger("sennet.testing.vm")


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Log a nested, timed step: 'vm: waiting for agent (finished in 2.1 s)'."""
    start = time.monotonic()
    event(log, "step_started", step=what)
    try:
        yield
    finally:
        event(log, "step_finished", step=what, seconds=round(time.monotonic() - start, 1))


class Machine:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        pass_fds: Sequence[int],
        log_dir: Path,
        ssh_port: int | None,
        ssh_key: Path | None,
    ) -> None:
        """`ssh_port`/`ssh_key` None: a guest without SSH (the production variant), watched
        through its console only."""
        self.name = name
        self.argv = list(argv)
        self.pass_fds = tuple(pass_fds)
        self.log_dir = log_dir
        self.ssh_port = ssh_port
        self.ssh_key = ssh_key
        self.console_path = log_dir / f"{name}.console.log"
        self.boots = 0
        self.booted_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._console = bytearray()
        self._console_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._host: Any = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        self.boots += 1
        with self._console_lock:
            self._console.clear()
        with self.console_path.open("ab") as out:
            out.write(f"\n===== {self.name}: boot {self.boots} =====\n".encode())
        self.booted_at = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=self.pass_fds,
            )
        except OSError as exc:
            raise HarnessError(f"cannot start QEMU: {exc}") from exc
        self._reader = threading.Thread(target=self._pump, name=f"{self.name}-console", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        with self.console_path.open("ab") as out:
            for chunk in iter(lambda: os.read(fd, 4096), b""):
                out.write(chunk)
                out.flush()
                with self._console_lock:
                    self._console.extend(chunk)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def crash(self) -> None:
        """Pull the plug (no clean shutdown): what a power cut does."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        self._proc = None
        self._host = None

    def wait_exit(self, timeout: float) -> None:
        """Wait for QEMU to end by itself (a guest reboot under -no-reboot), then clean up."""
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise TestFailed(f"{self.name}: QEMU still running after {timeout} s") from None
        self.crash()

    def shutdown(self) -> None:
        """Ask the guest to power off, then make sure QEMU is gone."""
        if self.running:
            with contextlib.suppress(Exception):
                self.execute("poweroff", timeout=5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                assert self._proc is not None
                self._proc.wait(20)
        self.crash()

    def reboot(self) -> None:
        with step(f"{self.name}: reboot"):
            self.shutdown()
            self.start()

    # -- console ---------------------------------------------------------------

    def console(self) -> str:
        with self._console_lock:
            return self._console.decode(errors="replace")

    def wait_for_console(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        regex = re.compile(pattern)

        def attempt(last: bool) -> re.Match[str] | None:
            found = regex.search(self.console())
            if found is None and not self.running:
                raise TestFailed(f"{self.name}: QEMU exited before {pattern!r}:\n{self.tail()}")
            if found is None and last:
                event(log, "console_tail", logging.ERROR, machine=self.name, tail=self.tail())
            return found

        with step(f"{self.name}: waiting for console {pattern!r}"):
            try:
                found: re.Match[str] = retry(
                    attempt, timeout, interval=0.1, what=f"console {pattern!r}"
                )
                return found
            except RetryTimeout as exc:
                raise TestFailed(f"{self.name}: {exc}\n{self.tail()}") from None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.console().splitlines()[-lines:])

    # -- commands --------------------------------------------------------------

    def _ssh(self, command: str) -> list[str]:
        if self.ssh_port is None or self.ssh_key is None:
            raise HarnessError(f"{self.name}: no SSH into this guest (production variant)")
        # ConnectTimeout covers the TCP connect and the key exchange, which the guest runs
        # under TCG beside its boot work: on a loaded host a command right after a
        # successful `true` failed with ssh's own 255 at 5 s. `timeout` still bounds it.
        return [
            "ssh", "-q", "-i", str(self.ssh_key), "-p", str(self.ssh_port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR",
            "root@127.0.0.1", command,
        ]  # fmt: skip

    def execute(self, command: str, timeout: float = 60) -> tuple[int, str]:
        try:
            r = subprocess.run(
                self._ssh(command),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return 124, f"(timed out after {timeout} s)"
        return r.returncode, r.stdout + r.stderr

    def succeed(self, command: str, timeout: float = 60) -> str:
        status, out = self.execute(command, timeout)
        if status != 0:
            raise TestFailed(f"{self.name}: `{command}` exited {status}:\n{out}")
        return out

    def fail(self, command: str, timeout: float = 60) -> str:
        status, out = self.execute(command, timeout)
        if status == 0:
            raise TestFailed(f"{self.name}: `{command}` succeeded but should have failed:\n{out}")
        return out

    def wait_until_succeeds(self, command: str, timeout: float = 60) -> str:
        def attempt(last: bool) -> str | None:
            status, out = self.execute(command, timeout=10)
            if status != 0 and last:
                event(
                    log, "last_try_failed", logging.ERROR, machine=self.name, command=command,
                    status=status, output=out,
                )  # fmt: skip
            return out if status == 0 else None

        with step(f"{self.name}: waiting for `{command}`"):
            try:
                out: str = retry(attempt, timeout, interval=0.5, what=f"`{command}`")
                return out
            except RetryTimeout as exc:
                raise TestFailed(f"{self.name}: {exc}") from None

    def wait_for_ssh(self, timeout: float = 120) -> None:
        self.wait_until_succeeds("true", timeout)

    def copy_from(self, path: str) -> bytes:
        r = subprocess.run(self._ssh(f"cat {shlex.quote(path)}"), capture_output=True, timeout=30)
        if r.returncode != 0:
            raise TestFailed(f"{self.name}: cannot read {path}: {r.stderr.decode()}")
        return r.stdout

    def copy_to(self, src: Path, dest: str, timeout: float = 300) -> None:
        """Copy a host file into the guest over SSH (the test variant's way in for a file)."""
        with src.open("rb") as data:
            r = subprocess.run(
                self._ssh(f"cat > {shlex.quote(dest)}"),
                stdin=data,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        if r.returncode != 0:
            raise TestFailed(f"{self.name}: cannot write {dest}: {r.stderr.decode()}")

    # -- testinfra -------------------------------------------------------------

    @property
    def host(self) -> Any:
        """A testinfra Host over the same SSH connection settings."""
        if self._host is None:
            import testinfra

            self._ssh("true")  # fails clearly for a guest without SSH
            cfg = self.log_dir / f"{self.name}.ssh_config"
            cfg.write_text(
                "Host guest\n  HostName 127.0.0.1\n  User root\n"
                f"  Port {self.ssh_port}\n  IdentityFile {self.ssh_key}\n"
                "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
                "  BatchMode yes\n"
            )
            self._host = testinfra.get_host("ssh://guest", ssh_config=str(cfg))
        return self._host

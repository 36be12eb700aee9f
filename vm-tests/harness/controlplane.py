"""A real control plane on the host (SQLite file, real gRPC and HTTP), restartable.

The guest reaches the host's loopback as 10.0.2.2 through QEMU user networking,
so the control plane listens on 127.0.0.1 only. A restart keeps the same ports
and database, as an operator's restart would.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sennet.common.retry import retry

from harness.errors import HarnessError

CP = [sys.executable, "-m", "sennet.controlplane.cli"]


@dataclass
class ControlPlane:
    workdir: Path
    name: str = "cp"
    grpc_port: int = 0
    http_port: int = 0
    token: str = ""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def db(self) -> Path:
        return self.workdir / f"{self.name}.db"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def create_token(self) -> str:
        r = subprocess.run(
            [*CP, "--db", str(self.db), "token", "create", "--name", "vm-tests"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if r.returncode != 0:
            raise HarnessError(f"token create failed: {r.stderr}")
        self.token = r.stdout.strip()
        return self.token

    def start(self) -> None:
        ready = self.workdir / f"{self.name}.ready"
        ready.unlink(missing_ok=True)
        argv = [
            *CP, "--db", str(self.db), "serve",
            "--grpc-listen", f"127.0.0.1:{self.grpc_port}",
            "--http-listen", f"127.0.0.1:{self.http_port}",
            "--ready-file", str(ready),
        ]  # fmt: skip
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

        def attempt(last: bool) -> dict[str, int] | None:
            if self._proc is not None and self._proc.poll() is not None:
                raise HarnessError(f"control plane exited:\n{self.log_path.read_text()[-3000:]}")
            if ready.exists():
                data: dict[str, int] = json.loads(ready.read_text())
                return data
            return None

        info = retry(attempt, 30, what="control plane ready")
        self.grpc_port, self.http_port = info["grpc_port"], info["http_port"]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        out: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        """Read the control plane's own SQLite file (read-only, WAL-safe)."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return list(conn.execute(sql, args))
        finally:
            conn.close()

    def scalar(self, sql: str, *args: object) -> int:
        """A single integer from the database (a count, a flag)."""
        ((value,),) = self.query(sql, *args)
        assert isinstance(value, int), value
        return value

    def wait_metric(self, name: str, expected: float, timeout: float = 60) -> None:
        last: dict[str, float] = {}

        def attempt(final: bool) -> bool | None:
            nonlocal last
            try:
                last = self.metrics()
            except OSError:
                return None
            return True if last.get(name) == expected else None

        try:
            retry(attempt, timeout, interval=0.5, what=f"{name} == {expected}")
        except TimeoutError:
            near = {k: v for k, v in last.items() if k.split("{")[0] == name.split("{")[0]}
            raise AssertionError(f"{name} never reached {expected}; last seen: {near}") from None

    def wait_until(self, what: str, predicate: object, timeout: float = 60) -> None:
        """Poll `predicate()` (truthy = done) on the harness's retry primitive."""
        assert callable(predicate)
        retry(lambda last: True if predicate() else None, timeout, interval=0.5, what=what)

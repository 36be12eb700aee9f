"""Test harness: the real `sennet-controlplane` as a process, and thin gRPC/Connect clients.

The control plane always runs as its own process on 127.0.0.1 with ephemeral
ports (it reports them through --ready-file), against a SQLite file in the
test's temp dir. Stopping is SIGTERM (the graceful path a restart test needs)
with a kill as the fallback; the log is printed when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from sennet.common.retry import retry
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

CP = [sys.executable, "-m", "sennet.controlplane.cli"]
SERVICE = "/sentinel.v1.SentinelService/"


def cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CP, "--db", str(db), *args], capture_output=True, text=True, check=False, timeout=30
    )


def create_bootstrap_token(db: Path, name: str = "test") -> str:
    result = cli(db, "token", "create", "--name", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@dataclass
class ControlPlane:
    db: Path
    workdir: Path
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    grpc_port: int = 0
    http_port: int = 0
    starts: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "controlplane.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, grpc_port: int = 0, http_port: int = 0) -> ControlPlane:
        """Start (or restart on the same ports, when given) and wait until serving."""
        ready = self.workdir / "ready.json"
        ready.unlink(missing_ok=True)
        argv = [
            *CP,
            "--db",
            str(self.db),
            "serve",
            "--grpc-listen",
            f"127.0.0.1:{grpc_port}",
            "--http-listen",
            f"127.0.0.1:{http_port}",
            "--ready-file",
            str(ready),
            *self.extra,
        ]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        proc = self.proc

        def attempt(last: bool) -> dict[str, int] | None:
            if ready.exists():
                data: dict[str, int] = json.loads(ready.read_text())
                return data
            if proc.poll() is not None:
                raise AssertionError(f"control plane exited ({proc.returncode}):\n{self.log()}")
            return None

        info = retry(attempt, 20.0, what="control plane ready file")
        self.grpc_port, self.http_port = info["grpc_port"], info["http_port"]
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"control plane ignored SIGTERM:\n{self.log()}") from None
        return proc.returncode

    def restart(self) -> None:
        grpc_port, http_port = self.grpc_port, self.http_port
        assert self.stop() == 0, self.log()
        self.start(grpc_port, http_port)

    # -- HTTP ----------------------------------------------------------------------------

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.http + path, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def metrics_text(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200
        return body.decode()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample in /metrics, keyed by (name, sorted labels)."""
        return parse_samples(self.metrics_text())

    def connect(
        self,
        method: str,
        body: bytes,
        token: str | None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(
            self.http + SERVICE + method, data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    # -- gRPC ----------------------------------------------------------------------------

    def call_raw(
        self, method: str, body: bytes, token: str | None
    ) -> tuple[grpc.StatusCode, str, bytes]:
        """One unary call with a raw body: (status code, details, response bytes)."""
        with grpc.insecure_channel(self.target) as channel:
            stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(SERVICE + method)
            metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
            try:
                out = stub(body, timeout=10, metadata=metadata)
            except grpc.RpcError as err:
                return err.code(), err.details() or "", b""
            return grpc.StatusCode.OK, "", out

    def register(
        self, bootstrap: str, agent_id: str | None = None, hostname: str = "host-a"
    ) -> tuple[str, str]:
        agent_id = agent_id or str(uuid.uuid4())
        req = pb.RegisterRequest(
            agent_id=agent_id, hostname=hostname, agent_version="0.1.0", kernel_version="6.18.0"
        )
        code, details, out = self.call_raw("Register", req.SerializeToString(), bootstrap)
        assert code == grpc.StatusCode.OK, details
        resp = pb.RegisterResponse.FromString(out)
        return agent_id, resp.agent_token

    def heartbeat(self, token: str, req: pb.HeartbeatRequest) -> tuple[grpc.StatusCode, str]:
        code, details, _ = self.call_raw("Heartbeat", req.SerializeToString(), token)
        return code, details


def parse_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def sample(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def heartbeat_request(
    agent_id: str,
    *,
    rx: tuple[int, int] = (0, 0),
    tx: tuple[int, int] = (0, 0),
    ifname: str = "eth1",
    events: dict[str, int] | None = None,
    drops: dict[str, int] | None = None,
    uptime: float = 10.0,
    recent: list[pb.Event] | None = None,
    agent_dropped: int = 0,
) -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(
        agent_id=agent_id,
        agent_version="0.1.0",
        kernel_version="6.18.0",
        uptime_seconds=uptime,
        interfaces=[
            pb.InterfaceCounters(
                name=ifname,
                ifindex=7,
                rx_packets=rx[0],
                rx_bytes=rx[1],
                tx_packets=tx[0],
                tx_bytes=tx[1],
            )
        ],
        events_by_kind=events or {},
        ringbuf_drops_by_kind=drops or {},
        recent_events=recent or [],
        events_dropped_by_agent=agent_dropped,
    )


@contextlib.contextmanager
def running(db: Path, workdir: Path, extra: list[str] | None = None) -> Iterator[ControlPlane]:
    cp = ControlPlane(db, workdir, list(extra or []))
    try:
        yield cp.start()
    except BaseException:
        print(f"--- control plane log ({cp.log_path}) ---\n{cp.log()}")
        raise
    finally:
        if cp.proc is not None and cp.proc.poll() is None:
            cp.proc.kill()
            cp.proc.wait()

"""The real `sennet-controlplane` as a process, and thin clients for each of its doors.

It runs on 127.0.0.1 against a SQLite file, with port 0 unless told otherwise;
the ports it bound come back through --ready-file. A restart keeps the same
ports and database, as an operator's restart would. The clients speak each
transport the way an outside caller does: raw gRPC unary calls (so tests can
send malformed bodies), Connect over plain HTTP, a /metrics scrape parsed by
the reference parser, and read-only SQL on the database file.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import sqlite3
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from sennet.common.retry import retry
from sennet.proto import contract
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.errors import HarnessError, TestFailed
from sennet.testing.process import PYTHON, LoggedProcess
from sennet.testing.scrape import Samples, fetch, parse_samples, sample

COMMAND = [PYTHON, "-m", "sennet.controlplane.cli"]
AnyMethod = contract.Method[Any, Any]


def cli(db: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`sennet-controlplane --db DB ARGS...`, captured (the operator's command line)."""
    return subprocess.run(
        [*COMMAND, "--db", str(db), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def create_bootstrap_token(db: Path, name: str = "test", *flags: str) -> str:
    """A new bootstrap token, made with the operator's own command (`flags`: e.g. --max-uses)."""
    result = cli(db, "token", "create", "--name", name, *flags)
    if result.returncode != 0:
        raise TestFailed(f"token create failed ({result.returncode}): {result.stderr}")
    return result.stdout.strip()


def _method(method: str | AnyMethod) -> AnyMethod:
    if isinstance(method, str):
        return contract.BY_NAME[method]  # KeyError: not a method of the contract
    return method


class ControlPlane:
    """One control-plane process (restartable) and its clients."""

    def __init__(
        self,
        db: Path,
        workdir: Path,
        extra: Sequence[str] = (),
        name: str = "controlplane",
        run_as: Sequence[str] = (),
    ) -> None:
        """`run_as`: a command prefix such as `setpriv --reuid=...` (an unprivileged run)."""
        self.db = db
        self.workdir = workdir
        self.extra = list(extra)
        self.name = name
        self.run_as = list(run_as)
        self.grpc_port = 0
        self.http_port = 0
        self.token = ""  # the bootstrap token from create_token(), if made
        self.process = LoggedProcess(name, COMMAND, workdir / f"{name}.log")

    # -- process ---------------------------------------------------------------------------

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def starts(self) -> int:
        return self.process.starts

    def log(self) -> str:
        return self.process.log()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> str:
        scheme = "https" if self.http_tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def http_tls(self) -> ssl.SSLContext | None:
        """With --tls-cert the HTTP port speaks TLS too: trust exactly that certificate."""
        if "--tls-cert" not in self.extra:
            return None
        cert = self.extra[self.extra.index("--tls-cert") + 1]
        ctx = ssl.create_default_context(cafile=cert)
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the anchor
        ctx.check_hostname = False  # we dial 127.0.0.1, not the certificate's name
        return ctx

    def create_token(self, name: str = "test") -> str:
        self.token = create_bootstrap_token(self.db, name)
        return self.token

    def start(self, grpc_port: int | None = None, http_port: int | None = None) -> ControlPlane:
        """Start (on the ports it had, or the ones given) and wait until it serves."""
        grpc_port = self.grpc_port if grpc_port is None else grpc_port
        http_port = self.http_port if http_port is None else http_port
        ready = self.workdir / f"{self.name}.ready.json"
        ready.unlink(missing_ok=True)
        self.process.argv = [
            *self.run_as, *COMMAND, "--db", str(self.db), "serve",
            "--grpc-listen", f"127.0.0.1:{grpc_port}",
            "--http-listen", f"127.0.0.1:{http_port}",
            "--ready-file", str(ready),
            *self.extra,
        ]  # fmt: skip
        info = self.process.start().wait_for_json(ready)
        self.grpc_port, self.http_port = int(info["grpc_port"]), int(info["http_port"])
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return self.process.stop(sig)

    def restart(self) -> None:
        """A graceful stop (which must exit 0) and a start on the same ports and database."""
        code = self.stop()
        if code != 0:
            raise TestFailed(f"{self.name} exited {code} on SIGTERM:\n{self.log()}")
        self.start()

    # -- HTTP --------------------------------------------------------------------------------

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                self.http + path, timeout=10, context=self.http_tls
            ) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def metrics_text(self) -> str:
        return fetch(self.http + "/metrics", context=self.http_tls)

    def samples(self) -> Samples:
        """Every sample in /metrics, keyed by (name, sorted labels)."""
        return parse_samples(self.metrics_text())

    def connect(
        self,
        method: str | AnyMethod,
        body: bytes,
        token: str | None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        """One Connect unary call over plain HTTP: (HTTP status, decoded JSON body)."""
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        status, answer = self._post(_method(method).path, body, headers)
        return status, json.loads(answer or b"{}")

    def connect_proto(self, method: str | AnyMethod, body: bytes, token: str) -> tuple[int, bytes]:
        """One Connect unary call with a binary protobuf body: (HTTP status, response body)."""
        headers = {"Content-Type": "application/proto", "Authorization": f"Bearer {token}"}
        return self._post(_method(method).path, body, headers)

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """POST on the HTTP port: (status, body). A server may answer (an oversized body's
        refusal) and close before the client has sent everything; the answer is then read
        even though sending the rest failed with a broken pipe, as an HTTP client should."""
        conn: http.client.HTTPConnection
        if self.http_tls is not None:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.http_port, timeout=30, context=self.http_tls
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        try:
            # answered early and closed: the answer waits in the socket
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    # -- gRPC --------------------------------------------------------------------------------

    def call_raw(
        self, method: str | AnyMethod, body: bytes, token: str | None
    ) -> tuple[grpc.StatusCode, str, bytes]:
        """One unary call with a raw body: (status code, details, response bytes)."""
        result = self.call_full(method, body, token)
        return result.code, result.details, result.body

    def call_full(
        self, method: str | AnyMethod, body: bytes, token: str | None, timeout: float = 10.0
    ) -> CallResult:
        """One unary call with a raw body, keeping the trailing metadata (retry hints)."""
        with grpc.insecure_channel(self.target) as channel:
            stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                _method(method).path
            )
            metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
            try:
                out, call = stub.with_call(body, timeout=timeout, metadata=metadata)
            except grpc.RpcError as err:
                trailing = _metadata(err.trailing_metadata())
                return CallResult(err.code(), err.details() or "", b"", trailing)
            return CallResult(grpc.StatusCode.OK, "", out, _metadata(call.trailing_metadata()))

    def register(
        self, bootstrap: str, agent_id: str | None = None, hostname: str = "host-a"
    ) -> tuple[str, str]:
        """Enrol an agent id (a fresh one unless given): (agent id, its agent token)."""
        agent_id = agent_id or str(uuid.uuid4())
        req = pb.RegisterRequest(
            agent_id=agent_id, hostname=hostname, agent_version="0.1.0", kernel_version="6.18.0"
        )
        code, details, out = self.call_raw(contract.REGISTER, req.SerializeToString(), bootstrap)
        if code != grpc.StatusCode.OK:
            raise TestFailed(f"Register refused: {code.name} {details}")
        return agent_id, pb.RegisterResponse.FromString(out).agent_token

    def heartbeat(self, token: str, req: pb.HeartbeatRequest) -> tuple[grpc.StatusCode, str]:
        code, details, _ = self.call_raw(contract.HEARTBEAT, req.SerializeToString(), token)
        return code, details

    def call(
        self, transport: str, method: str | AnyMethod, req: Message, token: str | None
    ) -> tuple[str, str]:
        """(lower-case status code, message) for one call over `transport` (grpc or connect)."""
        if transport == "grpc":
            code, details, _ = self.call_raw(method, req.SerializeToString(), token)
            return code.name.lower(), details
        if transport != "connect":
            raise HarnessError(f"no transport {transport!r}; use grpc or connect")
        status, body = self.connect(method, json_format.MessageToJson(req).encode(), token)
        if status == 200:
            return "ok", ""
        return str(body["code"]), str(body["message"])

    def rejected(self, method: str, code: str, reason: str) -> float:
        """`sennet_controlplane_requests_rejected_total` for one (method, code, reason)."""
        value = sample(
            self.samples(),
            "sennet_controlplane_requests_rejected_total",
            method=method,
            code=code,
            reason=reason,
        )
        if value is None:  # every reason is pre-created at zero
            raise TestFailed(f"/metrics has no rejection series {method}/{code}/{reason}")
        return value

    # -- SQLite ------------------------------------------------------------------------------

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Read the control plane's own database file (read-only, WAL-safe)."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return list(conn.execute(sql, args))
        finally:
            conn.close()

    def scalar(self, sql: str, *args: object) -> int:
        """A single integer from the database (a count, a flag)."""
        ((value,),) = self.query(sql, *args)
        if not isinstance(value, int):
            raise HarnessError(f"{sql!r} gave {value!r}, not an integer")
        return value

    def wait_until(self, what: str, predicate: Callable[[], object], timeout: float = 60) -> None:
        """Poll `predicate()` (truthy = done) on the one retry primitive."""
        try:
            retry(lambda last: True if predicate() else None, timeout, interval=0.5, what=what)
        except TimeoutError as exc:
            raise TestFailed(str(exc)) from None


def _metadata(items: Any) -> dict[str, str]:
    """gRPC metadata (pairs, or None) as a dict of text values."""
    out: dict[str, str] = {}
    for key, value in items or ():
        out[str(key)] = value.decode() if isinstance(value, bytes) else str(value)
    return out


@dataclass(frozen=True)
class CallResult:
    """What a gRPC caller sees of one unary call."""

    code: grpc.StatusCode
    details: str
    body: bytes
    trailing: dict[str, str]


@contextlib.contextmanager
def write_lock(db: Path) -> Iterator[None]:
    """Hold the database's write lock from another connection, as a stuck tool or backup would.

    A real SQLite lock on the real file: the control plane's writer waits on it
    (up to its busy timeout) and then fails, exactly as in production.
    """
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@dataclass(frozen=True)
class Served:
    """A running control plane and a bootstrap token it accepts (what a test enrols with)."""

    cp: ControlPlane
    bootstrap: str


@contextlib.contextmanager
def running(
    db: Path, workdir: Path, extra: Sequence[str] = (), name: str = "controlplane"
) -> Iterator[ControlPlane]:
    """A started control plane, killed on every exit; its log printed if the body failed."""
    cp = ControlPlane(db, workdir, extra, name)
    try:
        yield cp.start()
    except BaseException:
        print(f"--- {name} log ({cp.log_path}) ---\n{cp.log()}")
        raise
    finally:
        cp.process.kill()


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
    """A heartbeat as an agent would send it, with the counters a test chooses."""
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

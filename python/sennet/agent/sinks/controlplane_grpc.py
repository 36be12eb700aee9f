"""The agent's sender to the control plane: a `SnapshotSink` over gRPC.

`send()` never waits on the network: it records the newest snapshot and queues
its events, then wakes a background thread that does the RPCs. Counters are
cumulative, so only the newest snapshot matters; an outage loses no counts.
Events are held in a queue bounded both in count and in encoded bytes (a few
large events must not grow the agent's memory past the count bound's intent);
past either bound the oldest are dropped first and counted in
`events_dropped_by_agent`. They leave the queue only when a heartbeat that
carried them was acknowledged, i.e. committed by the control plane.

While the control plane is unreachable the thread backs off exponentially
with jitter, so a fleet that lost its control plane does not return in one
synchronised wave. The agent enrols itself with the bootstrap token and keeps
its own token in `state_dir/agent/agent-token` (mode 0600). If the control plane
rejects that token (revoked, or its database was replaced) the agent tries to
enrol again, but the control plane lets a bootstrap token enrol an agent id it
already knows only after an operator's `agent reset` (and never a disabled
one). Such a refusal, or a bootstrap token that expired or was used up, needs
a person: it is logged once (`enrolment_refused`), and the thread keeps backing
off and retrying while `send()` keeps the newest counters, so nothing is lost
once the operator acts.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from sennet.agent.sinks.agent_token import TokenFile
from sennet.agent.sinks.heartbeat_message import event_to_proto, snapshot_to_request
from sennet.agent.sinks.protocol import SnapshotSink
from sennet.agent.snapshot import Snapshot
from sennet.common.errors import UserError
from sennet.common.log import event
from sennet.proto.contract import HEARTBEAT, REGISTER, Method, Req, Resp
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

log = logging.getLogger("sennet.agent.sinks.controlplane_grpc")

_RE_ENROL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# A Register refused with one of these will not succeed by retrying alone.
_NEEDS_OPERATOR = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _unary(
    channel: grpc.Channel, method: Method[Req, Resp]
) -> grpc.UnaryUnaryMultiCallable[Req, Resp]:
    """A callable for one RPC; path and message classes come from the compiled proto."""
    return channel.unary_unary(
        method.path,
        request_serializer=method.request.SerializeToString,
        response_deserializer=method.response.FromString,
    )


@dataclass(frozen=True)
class SinkOptions:
    """Tunables; the defaults suit a 10 s heartbeat interval."""

    rpc_deadline_s: float = 5.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    max_queued_events: int = 4096
    max_queued_event_bytes: int = 4 << 20  # protobuf-encoded size of the queued events
    max_events_per_heartbeat: int = 256
    close_flush_s: float = 2.0


@dataclass(frozen=True)
class SinkStats:
    heartbeats_acked: int
    failures: int
    consecutive_failures: int
    enrolments: int
    enrolments_refused: int  # Register calls refused for want of an operator's action
    events_queued: int
    events_queued_bytes: int
    events_dropped: int
    last_error: str | None


def backoff_delay(failures: int, opts: SinkOptions, rng: random.Random) -> float:
    """Equal-jitter exponential backoff: half the capped delay fixed, half random."""
    capped = min(opts.backoff_max_s, opts.backoff_initial_s * 2.0 ** max(0, failures - 1))
    return capped / 2 + rng.uniform(0, capped / 2)


class GrpcSink:
    """SnapshotSink sending to the control plane from a background thread."""

    def __init__(
        self,
        target: str,
        bootstrap_token: str,
        state_dir: Path,
        agent_id: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        tls_server_name: str | None = None,
        options: SinkOptions | None = None,
        rng: random.Random | None = None,
        hostname: Callable[[], str] = socket.gethostname,
    ) -> None:
        self._target = target
        self._bootstrap = bootstrap_token
        self._agent_id = agent_id
        self._opts = options or SinkOptions()
        self._rng = rng or random.Random()
        self._hostname = hostname
        self._tokens = TokenFile(state_dir, agent_id, target)
        self._token = self._tokens.load()
        channel_options: list[tuple[str, str | int]] = [
            # grpc's own reconnect backoff defaults to a 120 s cap; ours governs retries.
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.min_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5000),
            ("grpc.enable_retries", 0),
        ]
        if tls_server_name:
            channel_options.append(("grpc.ssl_target_name_override", tls_server_name))
        if credentials is not None:
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
        else:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        self._register = _unary(self._channel, REGISTER)
        self._heartbeat = _unary(self._channel, HEARTBEAT)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._latest: Snapshot | None = None
        self._pending = False  # the latest snapshot has not been acknowledged yet
        self._events: deque[pb.Event] = deque()
        self._queued_bytes = 0  # sum of ByteSize() over self._events
        # Events are numbered per sink (agent process) so the control plane can store a
        # batch it already stored once, when our previous attempt's reply was lost.
        self._stream = uuid.uuid4().hex
        self._seq = 0
        self._inflight: set[int] = set()  # ids of queued events in the heartbeat being sent
        self._dropped = 0
        self._acked = 0
        self._failures = 0
        self._consecutive = 0
        self._enrolments = 0
        self._refusals = 0
        self._refusal_logged = False  # `enrolment_refused` is logged once per refused streak
        self._last_error: str | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="sennet-grpc-sink", daemon=True)
        self._thread.start()

    # -- SnapshotSink -----------------------------------------------------------------

    def send(self, snapshot: Snapshot) -> None:
        """Record the snapshot and queue its events; returns at once."""
        offset = time.time_ns() - time.monotonic_ns()
        converted = [event_to_proto(ev, offset) for ev in snapshot.recent_events]
        with self._lock:
            for ev in converted:
                self._seq += 1
                ev.seq = self._seq
            self._latest = snapshot
            self._pending = True
            self._dropped += snapshot.recent_events_dropped
            for ev in converted:
                self._events.append(ev)
                self._queued_bytes += ev.ByteSize()
                while self._events and (
                    len(self._events) > self._opts.max_queued_events
                    or self._queued_bytes > self._opts.max_queued_event_bytes
                ):
                    oldest = self._pop_oldest()
                    # one being sent right now may still arrive; the rest are lost
                    self._dropped += id(oldest) not in self._inflight
            self._wake.notify()

    def _pop_oldest(self) -> pb.Event:
        """Take the oldest queued event off, keeping the byte count true (lock held)."""
        oldest = self._events.popleft()
        self._queued_bytes -= oldest.ByteSize()
        return oldest

    def close(self) -> None:
        """Try briefly to deliver what is pending, then stop the thread and the channel.

        Idempotent: a second call returns at once (shutdown paths may both close)."""
        with self._lock:
            if self._closing:
                return
        self.flush(self._opts.close_flush_s)
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._channel.close()  # cancels a call in flight, so the agent's stop stays prompt
        self._thread.join(2.0)

    # -- for callers and tests --------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait until the latest snapshot is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.05))
            return not self._pending

    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(
                heartbeats_acked=self._acked,
                failures=self._failures,
                consecutive_failures=self._consecutive,
                enrolments=self._enrolments,
                enrolments_refused=self._refusals,
                events_queued=len(self._events),
                events_queued_bytes=self._queued_bytes,
                events_dropped=self._dropped,
                last_error=self._last_error,
            )

    # -- the sender thread ------------------------------------------------------------

    def _run(self) -> None:
        next_attempt = 0.0
        while True:
            with self._lock:
                while not self._closing and (not self._pending or time.monotonic() < next_attempt):
                    wait = None if not self._pending else next_attempt - time.monotonic()
                    self._wake.wait(wait)
                if self._closing:
                    return
                snap = self._latest
                batch = list(self._events)[: self._opts.max_events_per_heartbeat]
                self._inflight.update(id(ev) for ev in batch)
                dropped = self._dropped
            assert snap is not None
            error, refused = self._attempt(snap, batch, dropped)
            with self._lock:
                self._inflight.clear()
                if error is None or refused:
                    # Acknowledged events leave the queue; so do refused ones, or one bad
                    # event would block every later heartbeat (they are counted as dropped).
                    sent = {id(ev) for ev in batch}
                    while self._events and id(self._events[0]) in sent:
                        self._pop_oldest()
                        self._dropped += refused
                if error is None:
                    self._acked += 1
                    self._consecutive = 0
                    self._last_error = None
                    self._pending = self._latest is not snap or bool(self._events)
                    next_attempt = 0.0
                else:
                    self._failures += 1
                    self._consecutive += 1
                    self._last_error = error
                    next_attempt = time.monotonic() + backoff_delay(
                        self._consecutive, self._opts, self._rng
                    )
                self._wake.notify_all()

    def _attempt(
        self, snap: Snapshot, batch: list[pb.Event], dropped: int
    ) -> tuple[str | None, bool]:
        """One heartbeat (enrolling first if needed): (error or None, refused as invalid)."""
        try:
            if self._token is None:
                self._enrol(snap)
            assert self._token is not None
            req = snapshot_to_request(self._agent_id, snap, batch, dropped, self._stream)
            try:
                self._call_heartbeat(req)
            except grpc.RpcError as exc:
                if exc.code() not in _RE_ENROL:
                    raise
                event(
                    log,
                    "agent_token_rejected",
                    logging.WARNING,
                    code=exc.code().name,
                    detail=exc.details(),
                )
                self._tokens.discard()
                self._token = None
                self._enrol(snap)
                self._call_heartbeat(req)
            return None, False
        except grpc.RpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
            level = logging.WARNING if self._consecutive == 0 else logging.DEBUG
            event(
                log,
                "heartbeat_failed",
                level,
                control_plane=self._target,
                error=reason,
                consecutive_failures=self._consecutive + 1,
            )
            refused = exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            if refused:
                event(
                    log,
                    "heartbeat_refused",
                    logging.ERROR,
                    error=reason,
                    events_discarded=len(batch),
                )
            return reason, refused
        except (UserError, OSError) as exc:
            event(log, "heartbeat_failed", logging.WARNING, error=str(exc))
            return str(exc), False

    def _call_heartbeat(self, req: pb.HeartbeatRequest) -> None:
        self._heartbeat(
            req,
            timeout=self._opts.rpc_deadline_s,
            metadata=(("authorization", f"Bearer {self._token}"),),
        )

    def _enrol(self, snap: Snapshot) -> None:
        if not self._bootstrap:
            raise UserError("no agent token and no bootstrap_token configured; cannot enrol")
        try:
            resp = self._register(
                REGISTER.request(
                    agent_id=self._agent_id,
                    hostname=self._hostname()[:253],
                    agent_version=snap.agent_version,
                    kernel_version=snap.kernel_version,
                ),
                timeout=self._opts.rpc_deadline_s,
                metadata=(("authorization", f"Bearer {self._bootstrap}"),),
            )
        except grpc.RpcError as exc:
            if exc.code() in _NEEDS_OPERATOR:
                self._refused(exc)
            raise
        self._tokens.store(resp.agent_token)
        self._token = resp.agent_token
        with self._lock:
            self._enrolments += 1
            self._refusal_logged = False
        event(
            log,
            "enrolled",
            control_plane=self._target,
            agent=self._agent_id,
            token_file=self._tokens.path,
        )

    def _refused(self, exc: grpc.RpcError) -> None:
        """Count a refused enrolment; say so once per streak, at error level (a person must act)."""
        with self._lock:
            self._refusals += 1
            first = not self._refusal_logged
            self._refusal_logged = True
        if first:
            event(
                log,
                "enrolment_refused",
                logging.ERROR,
                control_plane=self._target,
                agent=self._agent_id,
                code=exc.code().name,
                detail=exc.details(),
                needs="an operator: `sennet-controlplane agent reset` (or `agent enable`) for "
                "this agent id, or a valid bootstrap_token; retrying with backoff meanwhile",
            )


def make_sink(
    control_plane: str,
    bootstrap_token: str,
    state_dir: Path,
    agent_id: str,
    tls_ca: str | None,
    tls_server_name: str | None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    options: SinkOptions | None = None,
) -> SnapshotSink:
    """The sink the agent's run loop uses when `control_plane` is configured.

    `tls_ca` is a PEM file path; when given the channel uses TLS and verifies
    the control plane's certificate against it (`tls_server_name` overrides the
    name checked, for addresses that are not in the certificate). `tls_cert`
    and `tls_key` add a client certificate, for a control plane that requires
    one (mTLS).
    """

    def read(path: str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {what} {path}: {exc.strerror}") from exc

    credentials = None
    if tls_ca:
        ca = read(tls_ca, "tls_ca")
        key = read(tls_key, "tls_key") if tls_key else None
        cert = read(tls_cert, "tls_cert") if tls_cert else None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
    return GrpcSink(
        control_plane,
        bootstrap_token,
        state_dir,
        agent_id,
        credentials=credentials,
        tls_server_name=tls_server_name,
        options=options,
    )

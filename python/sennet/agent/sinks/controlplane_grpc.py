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
synchronised wave. Enrolment and the agent token are `enrolment.Enrolment`'s:
a token the control plane rejects leads to one attempt to enrol again, and a
refusal that needs an operator is logged once while the thread keeps retrying.

`control_plane` may list several replicas of one control plane (one database),
in order of preference. A transport failure (UNAVAILABLE: refused, reset or
unreachable; DEADLINE_EXCEEDED: hung) moves the sink to the next address and
the same heartbeat goes there at once; only after every address failed in turn
does it back off. An authentication refusal is not a transport failure: it
means the same at every replica of one database. Replicas share enrolment, so
a failover never enrols again. While away from the first address the sink
tries it again at most once per `failback_s` and stays there at the first
heartbeat it acknowledges (`endpoints.Rotation`).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from sennet.agent.sinks.agent_token import TokenFile
from sennet.agent.sinks.endpoints import Rotation, split_addresses
from sennet.agent.sinks.enrolment import Enrolment
from sennet.agent.sinks.heartbeat_message import event_to_proto, snapshot_to_request
from sennet.agent.sinks.protocol import SnapshotSink
from sennet.agent.sinks.replicas import Replica, Replicas, credentials_from_files
from sennet.agent.snapshot import Snapshot
from sennet.common.errors import UserError
from sennet.common.log import event
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

log = logging.getLogger("sennet.agent.sinks.controlplane_grpc")

# Told of an update offer in an acknowledged heartbeat: (offer, gRPC address, agent token).
OfferHandler = Callable[[pb.UpdateOffer, str, str], None]

_RE_ENROL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# The replica is gone or hung: try the next one. Nothing else moves the sink.
_TRANSPORT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


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
    failback_s: float = 60.0  # away from the first address, try it again this often at most


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
    control_plane: str  # the address in use
    failovers: int
    failbacks: int
    last_ack_unix: float | None = None  # wall clock of the last acknowledged heartbeat


@dataclass(frozen=True)
class _Outcome:
    error: str | None  # None: acknowledged
    refused: bool = False  # refused as invalid: the batch is dropped
    transport: bool = False  # the replica did not answer: a failover reason
    address: str = ""


def backoff_delay(failures: int, opts: SinkOptions, rng: random.Random) -> float:
    """Equal-jitter exponential backoff: half the capped delay fixed, half random."""
    capped = min(opts.backoff_max_s, opts.backoff_initial_s * 2.0 ** max(0, failures - 1))
    return capped / 2 + rng.uniform(0, capped / 2)


class GrpcSink:
    """SnapshotSink sending to the control plane from a background thread."""

    def __init__(
        self,
        target: str | Sequence[str],
        bootstrap_token: str,
        state_dir: Path,
        agent_id: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        tls_server_name: str | None = None,
        options: SinkOptions | None = None,
        rng: random.Random | None = None,
        hostname: Callable[[], str] = socket.gethostname,
        offers: OfferHandler | None = None,
    ) -> None:
        addresses = (target,) if isinstance(target, str) else tuple(target)
        self._offers = offers
        self._agent_id = agent_id
        self._opts = options or SinkOptions()
        self._rng = rng or random.Random()
        tokens = TokenFile(state_dir, agent_id, addresses)
        self._enrolment = Enrolment(
            tokens, bootstrap_token, agent_id, hostname, self._opts.rpc_deadline_s, log
        )
        self._rotation = Rotation(addresses, self._opts.failback_s)
        self._replicas = Replicas(credentials, tls_server_name)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._latest: Snapshot | None = None
        self._pending = False  # the latest snapshot has not been acknowledged yet
        self._events: deque[pb.Event] = deque()
        self._queued_bytes = 0  # sum of ByteSize() over self._events
        # Events are numbered per sink (agent process) so the control plane can store a
        # batch it already stored once, when our previous attempt's reply was lost.
        self._stream = os.urandom(16).hex()  # as uuid4().hex, without importing uuid
        self._seq = 0
        self._inflight: set[int] = set()  # ids of queued events in the heartbeat being sent
        self._dropped = 0
        self._acked = 0
        self._last_ack_unix: float | None = None
        self._failures = 0
        self._consecutive = 0
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
        self._replicas.close()  # cancels a call in flight, so the agent's stop stays prompt
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
                enrolments=self._enrolment.enrolments,
                enrolments_refused=self._enrolment.refusals,
                events_queued=len(self._events),
                events_queued_bytes=self._queued_bytes,
                events_dropped=self._dropped,
                last_error=self._last_error,
                control_plane=self._rotation.current,
                failovers=self._rotation.failovers,
                failbacks=self._rotation.failbacks,
                last_ack_unix=self._last_ack_unix,
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
            outcome = self._deliver(snap, batch, dropped)
            error, refused = outcome.error, outcome.refused
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
                    self._last_ack_unix = time.time()
                    self._consecutive = 0
                    self._last_error = None
                    self._pending = self._latest is not snap or bool(self._events)
                    next_attempt = 0.0
                    event(
                        log,
                        "heartbeat_acked",
                        logging.DEBUG,
                        control_plane=outcome.address,
                        uptime_s=repr(snap.uptime_s),
                        events=len(batch),
                    )
                else:
                    self._failures += 1
                    self._consecutive += 1
                    self._last_error = error
                    rounds = self._consecutive
                    if outcome.transport:  # 0: the same heartbeat goes to the next address now
                        rounds = self._rotation.rounds_failed(self._consecutive)
                    delay = backoff_delay(rounds, self._opts, self._rng) if rounds else 0.0
                    next_attempt = time.monotonic() + delay
                self._wake.notify_all()

    def _deliver(self, snap: Snapshot, batch: list[pb.Event], dropped: int) -> _Outcome:
        """One heartbeat to the address in use, or first to the preferred one when a
        failback probe is due; a transport failure moves the rotation on."""
        rot = self._rotation
        if rot.probe_due():
            probe = self._attempt(self._replicas.get(rot.preferred), snap, batch, dropped)
            if probe.error is None:
                left = rot.fail_back()
                event(
                    log,
                    "control_plane_failback",
                    logging.INFO,
                    **{"from": left, "to": rot.preferred},
                )
                return probe
            if not probe.transport:
                return probe
            event(log, "failback_probe_failed", logging.DEBUG, reason=probe.error)
        outcome = self._attempt(self._replicas.get(rot.current), snap, batch, dropped)
        if outcome.transport:
            moved = rot.fail_over()
            if moved is not None:
                event(
                    log,
                    "control_plane_failover",
                    logging.WARNING,
                    **{"from": moved[0], "to": moved[1]},
                    reason=outcome.error,
                    failovers=rot.failovers,
                )
        return outcome

    def _attempt(
        self, replica: Replica, snap: Snapshot, batch: list[pb.Event], dropped: int
    ) -> _Outcome:
        """One heartbeat to `replica` (enrolling first if needed)."""
        try:
            token = self._enrolment.token or self._enrolment.enrol(snap, replica)
            req = snapshot_to_request(self._agent_id, snap, batch, dropped, self._stream)
            try:
                answer = self._call_heartbeat(replica, req, token)
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
                self._enrolment.discard()
                token = self._enrolment.enrol(snap, replica)
                answer = self._call_heartbeat(replica, req, token)
            if self._offers is not None and answer.HasField("update_offer"):
                self._offers(answer.update_offer, replica.address, token)
            return _Outcome(None, address=replica.address)
        except grpc.RpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
            level = logging.WARNING if self._consecutive == 0 else logging.DEBUG
            event(
                log,
                "heartbeat_failed",
                level,
                control_plane=replica.address,
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
            return _Outcome(reason, refused, exc.code() in _TRANSPORT, replica.address)
        except (UserError, OSError) as exc:
            event(log, "heartbeat_failed", logging.WARNING, error=str(exc))
            return _Outcome(str(exc), address=replica.address)

    def _call_heartbeat(
        self, replica: Replica, req: pb.HeartbeatRequest, token: str
    ) -> pb.HeartbeatResponse:
        return replica.heartbeat(
            req,
            timeout=self._opts.rpc_deadline_s,
            metadata=(("authorization", f"Bearer {token}"),),
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
    offers: OfferHandler | None = None,
) -> SnapshotSink:
    """The sink the agent's run loop uses when `control_plane` is configured.

    `control_plane` is one "host:port" or several, comma-separated, in order of
    preference (replicas on one database). `tls_ca` is a PEM file path; when
    given every channel uses TLS and verifies the replica's certificate against
    it (`tls_server_name` overrides the name checked, for addresses that are not
    in the certificate, and applies to every address). `tls_cert` and `tls_key`
    add a client certificate, for a control plane that requires one (mTLS).
    """
    try:
        addresses = split_addresses(control_plane)
    except ValueError as exc:
        raise UserError(f"control_plane: {exc}") from None
    return GrpcSink(
        addresses,
        bootstrap_token,
        state_dir,
        agent_id,
        credentials=credentials_from_files(tls_ca, tls_cert, tls_key),
        tls_server_name=tls_server_name,
        options=options,
        offers=offers,
    )

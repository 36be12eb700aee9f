"""The OTLP sink: snapshots in, batches queued, a background thread exporting them.

`send()` builds this interval's metrics request (and a logs request for the
events and the agent's notable moments), encodes both once, queues them and
returns: the network is the sender thread's business. The sender takes the
oldest batch and tries the endpoints in order of preference; a retryable
failure marks that endpoint not-before a backoff delay (exponential with
jitter, and never sooner than the server's own hint) and the same batch goes
to the next endpoint at once, so a dead collector costs one attempt, not an
interval. With `failback` the first endpoint is preferred again as soon as its
delay has passed and it answers. A permanent refusal drops the batch (counted
as failed); a partial success counts the rejected items. Every count is
exported as the agent's own `sennet.agent.otlp.*` metrics, in the next
metrics batch and on the agent's local /metrics.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sennet import __version__
from sennet.agent.sinks.otlp.logs import EventEncoder, Notable, logs_request, notable_record
from sennet.agent.sinks.otlp.metrics import MetricsBuilder, StartTimes, data_points
from sennet.agent.sinks.otlp.notable import NotableHandler
from sennet.agent.sinks.otlp.queue import Batch, ExportQueue
from sennet.agent.sinks.otlp.resource import OS_RELEASE, build_resource
from sennet.agent.sinks.otlp.settings import OtlpOptions
from sennet.agent.sinks.otlp.stats import OtlpStats, own_metrics
from sennet.agent.sinks.otlp.transport import LOGS, METRICS, Transport, make_transport
from sennet.agent.sinks.protocol import OwnMetric
from sennet.agent.snapshot import Event, Snapshot
from sennet.common.log import event

log = logging.getLogger("sennet.agent.sinks.otlp")

MAX_RECORDS_PER_BATCH = 2048
MAX_NOTABLE = 1024


def backoff_delay(failures: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Equal-jitter exponential backoff: half the capped delay fixed, half random."""
    capped = min(max_s, initial_s * 2.0 ** max(0, failures - 1))
    return capped / 2 + rng.uniform(0, capped / 2)


@dataclass
class _Endpoint:
    transport: Transport
    failures: int = 0
    not_before: float = 0.0  # monotonic


class OtlpSink:
    """A `SnapshotSink` exporting over OTLP/gRPC or OTLP/HTTP to a list of endpoints."""

    def __init__(
        self,
        opts: OtlpOptions,
        agent_id: str,
        *,
        version: str = __version__,
        pinned_start_ns: int | None = None,
        os_release: Path = OS_RELEASE,
        rng: random.Random | None = None,
        capture_logs: bool = True,
    ) -> None:
        if not opts.endpoints:
            raise ValueError("an OTLP sink needs at least one endpoint")
        self._opts = opts
        self._version = version
        self._resource = build_resource(agent_id, version, os_release)
        self._pinned_start_ns = pinned_start_ns
        self._builder: MetricsBuilder | None = None
        self._rng = rng or random.Random()
        agent = f"sennet-agent/{version}"
        self._eps = [_Endpoint(make_transport(e, opts, agent)) for e in opts.endpoints]
        self._queue = ExportQueue(opts.queue_bytes)
        self._stats = OtlpStats(active=opts.endpoints[0].text)
        self._active = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition()
        self._stopping = False
        self._abandon = False
        self._notable: deque[Notable] = deque()
        self._agent_dropped = 0
        self._seen_ifaces: set[str] = set()
        self._encoder = EventEncoder()
        self._handler: NotableHandler | None = None
        if capture_logs:
            self._handler = NotableHandler(self.note)
            logging.getLogger("sennet").addHandler(self._handler)
        self._thread = threading.Thread(target=self._run, name="otlp", daemon=True)
        self._thread.start()

    # -- the run loop's side ----------------------------------------------------

    def note(self, notable: Notable) -> None:
        """Queue one of the agent's notable moments for the next logs batch (bounded)."""
        with self._lock:
            if len(self._notable) >= MAX_NOTABLE:
                self._notable.popleft()
                self._stats.dropped[LOGS] += 1
            self._notable.append(notable)

    def send(self, snapshot: Snapshot) -> None:
        now = time.time_ns()
        if self._builder is None:
            process_start = now - int(snapshot.uptime_s * 1e9)
            pinned = self._pinned_start_ns or process_start
            self._builder = MetricsBuilder(
                self._resource, StartTimes(pinned, process_start), self._version
            )
            self.note(
                Notable(
                    "agent.started",
                    process_start,
                    logging.INFO,
                    (
                        ("version", snapshot.agent_version),
                        ("kernel", snapshot.kernel_version),
                        ("loader", snapshot.loader),
                    ),
                )
            )
        for c in snapshot.interfaces:
            if c.ifname not in self._seen_ifaces:
                self._seen_ifaces.add(c.ifname)
                self.note(
                    Notable(
                        "agent.attached",
                        now,
                        logging.INFO,
                        (("ifname", c.ifname), ("ifindex", c.ifindex)),
                    )
                )
        self._agent_dropped += snapshot.recent_events_dropped
        request = self._builder.request(snapshot, now, self.own_metrics(), self._agent_dropped)
        self._enqueue(Batch(METRICS, request.SerializeToString(), data_points(request)))
        ifnames = {c.ifindex: c.ifname for c in snapshot.interfaces}
        self._enqueue_logs(snapshot.recent_events, ifnames)

    def _enqueue_logs(self, events: Sequence[Event], ifnames: Mapping[int, str]) -> None:
        """Events, then the notable moments, in batches of at most MAX_RECORDS_PER_BATCH."""
        now = time.time_ns()
        with self._lock:
            notable, self._notable = list(self._notable), deque()
        for i in range(0, len(events) + len(notable), MAX_RECORDS_PER_BATCH):
            request = logs_request(self._resource, self._version, ())
            scope = request.resource_logs[0].scope_logs[0]
            self._encoder.add(scope, events[i : i + MAX_RECORDS_PER_BATCH], ifnames, now)
            room = MAX_RECORDS_PER_BATCH - len(scope.log_records)
            for n in notable[max(0, i - len(events)) :][:room]:
                scope.log_records.append(notable_record(n, now))
            self._enqueue(Batch(LOGS, request.SerializeToString(), len(scope.log_records)))

    def _enqueue(self, batch: Batch) -> None:
        dropped = self._queue.put(batch)
        if dropped:
            with self._lock:
                for d in dropped:
                    self._stats.dropped[d.signal] += d.items
            event(
                log,
                "otlp_queue_full",
                logging.WARNING,
                limit_bytes=self._queue.limit,
                dropped_batches=len(dropped),
                dropped_metrics=sum(d.items for d in dropped if d.signal == METRICS),
                dropped_logs=sum(d.items for d in dropped if d.signal == LOGS),
            )
        with self._wake:
            self._wake.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued batch was delivered or refused; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self._queue) == 0 and not self._sending:
                return True
            time.sleep(0.02)
        return len(self._queue) == 0 and not self._sending

    def close(self) -> None:
        """Export what is queued within `close_flush_s`, then stop; idempotent."""
        if self._stopping:
            return
        if self._handler is not None:
            logging.getLogger("sennet").removeHandler(self._handler)
        self.note(Notable("agent.stopping", time.time_ns(), logging.INFO))
        self._enqueue_logs((), {})
        with self._wake:
            self._stopping = True
            self._wake.notify()
        delivered = self.flush(self._opts.close_flush_s)
        with self._wake:
            self._abandon = True
            self._wake.notify()
        for ep in self._eps:  # cancels a call in flight: no wait for its deadline
            ep.transport.close()
        self._thread.join(timeout=2.0)
        if not delivered:
            event(
                log,
                "otlp_closed_with_pending",
                logging.WARNING,
                batches=len(self._queue),
                bytes=self._queue.bytes,
            )

    # -- read-out -----------------------------------------------------------------

    def stats(self) -> OtlpStats:
        with self._lock:
            s = self._stats
            return OtlpStats(
                Counter(s.exported),
                Counter(s.rejected),
                Counter(s.failed),
                Counter(s.dropped),
                Counter(s.retries),
                s.failovers,
                s.active,
            )

    @property
    def queue(self) -> ExportQueue:
        return self._queue

    def own_metrics(self) -> list[OwnMetric]:
        """The exporter's own figures, for the next export and the agent's /metrics."""
        endpoints = [ep.transport.endpoint.text for ep in self._eps]
        return own_metrics(self.stats(), self._queue, endpoints, self._active)

    # -- the sender thread ----------------------------------------------------------

    _sending = False

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._abandon and len(self._queue) == 0:
                    if self._stopping:
                        return
                    self._wake.wait()
                if self._abandon:
                    return
            batch = self._queue.head()
            if batch is None:
                continue
            self._sending = True
            try:
                done, wait_s = self._deliver(batch)
            finally:
                self._sending = False
            if done:
                self._queue.done(batch)
            else:
                with self._wake:
                    self._wake.wait_for(lambda: self._abandon, timeout=wait_s)

    def _order(self, now: float) -> list[int]:
        ready = [i for i, ep in enumerate(self._eps) if ep.not_before <= now]
        if self._opts.failback:
            return ready
        n = len(self._eps)
        return sorted(ready, key=lambda i: (i - self._active) % n)

    def _deliver(self, batch: Batch) -> tuple[bool, float]:
        """Try the ready endpoints in order; (batch finished, seconds to wait if not)."""
        for i in self._order(time.monotonic()):
            ep = self._eps[i]
            text = ep.transport.endpoint.text
            batch.attempts += 1
            out = ep.transport.export(batch.signal, batch.body)
            if out.ok:
                self._succeeded(i, batch, out.rejected, out.message)
                return True, 0.0
            if not out.retryable:
                with self._lock:
                    self._stats.failed[batch.signal] += batch.items
                event(
                    log,
                    "otlp_export_refused",
                    logging.WARNING,
                    endpoint=text,
                    signal=batch.signal,
                    error=out.error,
                    items=batch.items,
                )
                return True, 0.0
            ep.failures += 1
            delay = backoff_delay(
                ep.failures, self._opts.backoff_initial_s, self._opts.backoff_max_s, self._rng
            )
            if out.retry_after_s is not None:
                delay = max(delay, out.retry_after_s)
            ep.not_before = time.monotonic() + delay
            with self._lock:
                self._stats.retries[batch.signal] += 1
            event(
                log,
                "otlp_export_failed",
                logging.WARNING,
                endpoint=text,
                signal=batch.signal,
                error=out.error,
                failures=ep.failures,
                retry_in_s=round(delay, 3),
                server_hint_s=out.retry_after_s,
            )
        soonest = min(ep.not_before for ep in self._eps)
        return False, max(0.0, soonest - time.monotonic())

    def _succeeded(self, i: int, batch: Batch, rejected: int, message: str) -> None:
        ep = self._eps[i]
        text = ep.transport.endpoint.text
        if ep.failures:
            event(log, "otlp_endpoint_recovered", endpoint=text, after_failures=ep.failures)
        ep.failures, ep.not_before = 0, 0.0
        with self._lock:
            self._stats.exported[batch.signal] += batch.items - rejected
            self._stats.rejected[batch.signal] += rejected
            if i != self._active:
                self._stats.failovers += 1
                self._stats.active = text
        if i != self._active:
            previous = self._eps[self._active].transport.endpoint.text
            event(log, "otlp_endpoint_switched", endpoint=text, previous=previous)
            self._active = i
        if rejected:
            event(
                log,
                "otlp_partial_success",
                logging.WARNING,
                endpoint=text,
                signal=batch.signal,
                rejected=rejected,
                items=batch.items,
                message=message,
            )

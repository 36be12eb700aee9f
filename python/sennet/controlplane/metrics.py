"""Prometheus exposition: the server's own metrics, plus the fleet series on /metrics.

The control plane's own counters live in a registry owned by `ServerMetrics`
(never the process-global one). The per-agent series, and the caches that make
rendering them fast, are in `fleet_exposition.py` (interfaces, events) and
`insight_exposition.py` (flows, DNS, TCP); `Exposition` joins the two
into what GET /metrics returns and wires the export cache to the fleet.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from sennet.controlplane import old_path
from sennet.controlplane.fleet import Fleet
from sennet.controlplane.fleet_exposition import ExportCache, FastFleetRenderer, FleetCollector
from sennet.controlplane.fleet_text import FleetText
from sennet.controlplane.image_exposition import ImageCollector, ImageRenderer
from sennet.controlplane.insight_exposition import InsightCollector
from sennet.controlplane.insight_render import InsightRenderer
from sennet.controlplane.refusals import RequestError
from sennet.proto import contract

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METHODS = tuple(m.name for m in contract.METHODS)  # the `method` label's values


class Transport(enum.StrEnum):
    """The `transport` label's values: which protocol carried a call."""

    GRPC = "grpc"
    CONNECT = "connect"


# Every reason a call can be refused for, with its status code: a fixed set, pre-created
# at zero, so the series exist before the first refusal and cardinality stays bounded.
REJECT_REASONS = {
    "missing_token": "unauthenticated",
    "malformed_token": "unauthenticated",
    "unknown_token": "unauthenticated",
    "revoked_token": "unauthenticated",
    "expired_token": "unauthenticated",
    "token_used_up": "unauthenticated",
    "wrong_token_kind": "permission_denied",
    "agent_mismatch": "permission_denied",
    "agent_already_enrolled": "permission_denied",
    "agent_disabled": "permission_denied",
    "invalid_argument": "invalid_argument",
    "store_unavailable": "unavailable",
    # One bad client harms no other: refusals decided per heartbeat or by load.
    "unknown_event_kind": "invalid_argument",
    "counter_overflow": "invalid_argument",
    "too_many_series": "invalid_argument",
    "unstorable": "invalid_argument",
    "queue_full": "resource_exhausted",
    "too_many_calls": "resource_exhausted",
    "internal_error": "internal",
}


class ServerMetrics:
    """The control plane's own metrics, in a registry owned by this instance."""

    def __init__(
        self,
        agents: Callable[[], int],
        commits: Callable[[], int] = lambda: 0,
        pending: Callable[[], int] = lambda: 0,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCommits(commits))
        self.pending = Gauge(
            "sennet_controlplane_pending_heartbeats",
            "Heartbeats queued for the writer, not yet committed (bounded by "
            "--max-pending-heartbeats).",
            registry=self.registry,
        )
        self.pending.set_function(lambda: float(pending()))
        self.accepted = Counter(
            "sennet_controlplane_heartbeats_accepted",
            "Heartbeats stored and acknowledged.",
            ["transport"],
            registry=self.registry,
        )
        self.registrations = Counter(
            "sennet_controlplane_registrations",
            "Agents enrolled (or re-enrolled).",
            ["transport"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "sennet_controlplane_requests_rejected",
            "Requests refused, by method, status code and reason.",
            ["method", "code", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sennet_controlplane_rpc_duration_seconds",
            "Time to answer a Register/Heartbeat call.",
            ["method", "transport"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.agents = Gauge(
            "sennet_controlplane_agents", "Enrolled agents.", registry=self.registry
        )
        self.agents.set_function(lambda: float(agents()))
        self.plaintext_exposed = Gauge(
            "sennet_controlplane_plaintext_exposed",
            "1 while a port carries bearer tokens in the clear beyond loopback "
            "(--insecure-plaintext), by port.",
            ["port"],
            registry=self.registry,
        )
        for port in ("grpc", "http"):
            self.plaintext_exposed.labels(port).set(0)
        for transport in Transport:
            self.accepted.labels(transport)
            self.registrations.labels(transport)
            for method in METHODS:
                self.latency.labels(method, transport)
        for method in METHODS:
            for reason, code in REJECT_REASONS.items():
                self.rejected.labels(method, code, reason)

    def reject(self, method: str, err: RequestError) -> None:
        self.rejected.labels(method, err.code.connect, err.reason).inc()


class _StoreCommits(Collector):
    """Transactions the writer committed; heartbeats/commits is the group-commit batch size."""

    def __init__(self, commits: Callable[[], int]) -> None:
        self._commits = commits

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "sennet_controlplane_store_commits",
            "Store transactions committed (each covers a batch of heartbeats).",
            value=self._commits(),
        )


class Exposition:
    """What GET /metrics returns: server metrics plus fleet series, fast or plain."""

    def __init__(
        self, server: ServerMetrics, fleet: Fleet, stale_after_s: float, histogram_step: int = 1
    ) -> None:
        self._server = server
        self._fleet = fleet
        self._text: FleetText | None = None
        self._images = ImageRenderer()
        fleet.subscribe(self._images.warm)  # image and outcome lines laid out at commit
        if not old_path.selected():
            # each committed view's bytes are prepared as the fleet installs it
            self._text = FleetText(stale_after_s, histogram_step)
            fleet.subscribe(self._text.warm)
        else:
            self._old_path(fleet, stale_after_s, histogram_step)
        self._plain = CollectorRegistry()
        self._plain.register(FleetCollector(fleet, stale_after_s))
        self._plain.register(ImageCollector(fleet))
        self._plain.register(InsightCollector(fleet, histogram_step))

    def _old_path(self, fleet: Fleet, stale_after_s: float, histogram_step: int) -> None:
        """The renderers before issue 16 (text per family at scrape time), for the benchmark."""
        exports = ExportCache()
        fleet.subscribe(exports.warm)  # newly committed views are prepared before a scrape
        self._fast = FastFleetRenderer(stale_after_s, exports)
        self._insights = InsightRenderer(histogram_step)
        fleet.subscribe(self._insights.warm)  # flow, DNS and TCP text too
        # The agents loaded at start: prepared in the background, so the first scrape after a
        # restart does not lay out 10,000 agents itself (a scrape meanwhile renders the rest).
        threading.Thread(
            target=self._insights.warm,
            args=(fleet.snapshot(),),
            name="sennet-metrics-warm",
            daemon=True,
        ).start()

    def render(self, *, fast: bool = True) -> bytes:
        head = generate_latest(self._server.registry)
        if fast and self._text is not None:
            views = self._fleet.snapshot()
            images = self._images.render(views).encode()
            # one copy of the body: the chunks are joined with the head once
            return b"".join([head, *self._text.render(views, time.time()), images])
        if fast:  # the old path
            views = self._fleet.snapshot()
            fleet_text = self._fast.render(views, time.time()).encode()
            # one join: at 10,000 agents each extra concatenation copies tens of megabytes
            insights = self._insights.render(views).encode()
            images = self._images.render(views).encode()
            return b"".join((head, fleet_text, insights, images))
        return head + generate_latest(self._plain)

"""The exporter's own counts, and the same counts as metrics for every read-out.

Exports, partial-success rejections, permanent failures, drops and retries are
counted by signal in items (data points or log records), the unit a collector's
partial success and the queue's drops are measured in, so the figures add up:
what the agent produced = exported + rejected + failed + dropped + still queued.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sennet.agent.sinks.otlp.queue import ExportQueue
from sennet.agent.sinks.otlp.transport import LOGS, METRICS
from sennet.agent.sinks.protocol import Attrs, OwnMetric

SIGNALS = (METRICS, LOGS)


@dataclass
class OtlpStats:
    exported: Counter[str] = field(default_factory=Counter)  # items accepted
    rejected: Counter[str] = field(default_factory=Counter)  # partial success: refused items
    failed: Counter[str] = field(default_factory=Counter)  # items of permanently refused batches
    dropped: Counter[str] = field(default_factory=Counter)  # items dropped by the agent
    retries: Counter[str] = field(default_factory=Counter)  # retryable failed attempts
    failovers: int = 0
    active: str = ""


def own_metrics(
    s: OtlpStats, queue: ExportQueue, endpoints: Sequence[str], active: int
) -> list[OwnMetric]:
    def by_signal(counts: Counter[str]) -> tuple[tuple[Attrs, float], ...]:
        return tuple(((("signal", sig),), float(counts[sig])) for sig in SIGNALS)

    def counter(name: str, help: str, counts: Counter[str]) -> OwnMetric:
        return OwnMetric(f"sennet.agent.otlp.{name}", help, "counter", "{item}", by_signal(counts))

    def single(name: str, help: str, kind: str, unit: str, value: float) -> OwnMetric:
        return OwnMetric(f"sennet.agent.otlp.{name}", help, kind, unit, (((), value),))

    return [
        counter("exported", "Items (data points, log records) a collector accepted", s.exported),
        counter("rejected", "Items a collector refused in a partial success", s.rejected),
        counter("failed", "Items of batches refused with a permanent error", s.failed),
        counter("dropped", "Items dropped by the agent: export queue full", s.dropped),
        counter("retries", "Export attempts that failed and will be retried", s.retries),
        single("failovers", "Changes of the endpoint in use", "counter", "{change}", s.failovers),
        single("queue.size", "Bytes of encoded batches waiting", "gauge", "By", queue.bytes),
        single("queue.capacity", "The export queue's limit", "gauge", "By", queue.limit),
        OwnMetric(
            "sennet.agent.otlp.endpoint.active",
            "1 for the endpoint in use",
            "gauge",
            "1",
            tuple(((("endpoint", e),), float(i == active)) for i, e in enumerate(endpoints)),
        ),
    ]

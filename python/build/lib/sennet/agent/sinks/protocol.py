"""The seam between the agent's run loop and whatever receives its snapshots.

The run loop calls `sink.send(snapshot)` every interval. A sink must not block
the loop for long and must not raise for transport trouble: it logs, keeps what
it cannot send (bounded) and tries again next time. Every sink in this package
(the control plane's gRPC sender, the standalone log sink, and the OTLP senders
to come) implements this one protocol, so the run loop never knows which it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sennet.agent.snapshot import Snapshot


class SnapshotSink(Protocol):
    def send(self, snapshot: Snapshot) -> None:
        """Take this interval's snapshot; return at once, never raise for transport trouble."""
        ...

    def close(self) -> None:
        """Deliver what is pending if that is quick, then release threads and connections."""
        ...


Attrs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class OwnMetric:
    """One of a sink's own figures (exports, drops, queue size), for every read-out.

    `name` is dotted as OpenTelemetry names are ("sennet.agent.otlp.dropped");
    the agent's /metrics shows it with underscores (and `_total` for counters),
    which is also what an OTLP-to-Prometheus conversion makes of it.
    """

    name: str
    help: str
    kind: str  # "counter" (cumulative since the sink started) or "gauge"
    unit: str
    points: tuple[tuple[Attrs, float], ...]


class ReportsOwnMetrics(Protocol):
    def own_metrics(self) -> list[OwnMetric]:
        """The sink's figures now; cheap, safe to call from any thread."""
        ...

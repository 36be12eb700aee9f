"""Several sinks fed the same snapshots: the control plane's heartbeat and OTLP side by side.

Each sink has its own queue, thread, endpoints and failure accounting, so one
receiver's outage never slows or loses data for the other. A sink that raises
(it should not: sinks report transport trouble themselves) is logged and the
others still get the snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sennet.agent.sinks.protocol import OwnMetric, SnapshotSink
from sennet.agent.snapshot import Snapshot
from sennet.common.log import event

log = logging.getLogger("sennet.agent.sinks.fanout")


class FanoutSink:
    """A `SnapshotSink` handing every snapshot to each of its sinks, in order."""

    def __init__(self, sinks: Sequence[SnapshotSink]) -> None:
        self.sinks = tuple(sinks)

    def send(self, snapshot: Snapshot) -> None:
        for sink in self.sinks:
            try:
                sink.send(snapshot)
            except Exception as exc:
                event(log, "sink_failed", logging.ERROR, sink=type(sink).__name__, error=repr(exc))

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                event(
                    log,
                    "sink_close_failed",
                    logging.ERROR,
                    sink=type(sink).__name__,
                    error=repr(exc),
                )

    def own_metrics(self) -> list[OwnMetric]:
        return own_metrics_of(self.sinks)


def own_metrics_of(sinks: Sequence[object]) -> list[OwnMetric]:
    """The own metrics of every sink that reports some."""
    out: list[OwnMetric] = []
    for sink in sinks:
        own = getattr(sink, "own_metrics", None)
        if callable(own):
            out.extend(own())
    return out

"""The seam between the agent's run loop and whatever receives its snapshots.

The run loop calls `sink.send(snapshot)` every interval. A sink must not block
the loop for long and must not raise for transport trouble: it logs, keeps what
it cannot send (bounded) and tries again next time. Every sink in this package
(the control plane's gRPC sender, the standalone log sink, and the OTLP senders
to come) implements this one protocol, so the run loop never knows which it has.
"""

from __future__ import annotations

from typing import Protocol

from sennet.agent.snapshot import Snapshot


class SnapshotSink(Protocol):
    def send(self, snapshot: Snapshot) -> None:
        """Take this interval's snapshot; return at once, never raise for transport trouble."""
        ...

    def close(self) -> None:
        """Deliver what is pending if that is quick, then release threads and connections."""
        ...

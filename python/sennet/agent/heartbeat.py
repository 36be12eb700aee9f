"""The seam between the agent's loop and whatever receives its snapshots.

The run loop calls `sink.send(snapshot)` every interval. A sink must not block
the loop for long and must not raise for transport trouble: it logs, keeps what
it cannot send (bounded) and tries again next time. The gRPC sender to the
control plane implements this protocol; `LogSink` is the standalone default.
"""

from __future__ import annotations

import logging
from typing import Protocol

from sennet.agent.snapshot import Snapshot

log = logging.getLogger("sennet.agent.heartbeat")


class HeartbeatSink(Protocol):
    def send(self, snapshot: Snapshot) -> None: ...

    def close(self) -> None: ...


class LogSink:
    """No control plane: write a one-line summary per interval to the log."""

    def send(self, snapshot: Snapshot) -> None:
        fields: dict[str, object] = {"uptime_s": round(snapshot.uptime_s, 1)}
        for c in snapshot.interfaces:
            fields[f"{c.ifname}.rx_packets"] = c.rx_packets
            fields[f"{c.ifname}.rx_bytes"] = c.rx_bytes
            fields[f"{c.ifname}.tx_packets"] = c.tx_packets
            fields[f"{c.ifname}.tx_bytes"] = c.tx_bytes
        fields["events"] = sum(snapshot.events_by_kind.values())
        fields["ringbuf_drops"] = sum(snapshot.ringbuf_drops_by_kind.values())
        log.info("snapshot", extra={"fields": fields})

    def close(self) -> None:
        return None

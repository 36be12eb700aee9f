"""The standalone sink: no control plane configured, so one log line per interval.

A host without a control plane still shows, in its own log, that counting works
and what the totals are; `event=snapshot` is what tests and operators look for.
"""

from __future__ import annotations

import logging
from typing import Any

from sennet.agent.snapshot import Snapshot
from sennet.common.log import event

log = logging.getLogger("sennet.agent.sinks.log_sink")


class LogSink:
    """A `SnapshotSink` writing a one-line summary per interval to the log."""

    def send(self, snapshot: Snapshot) -> None:
        fields: dict[str, Any] = {"uptime_s": round(snapshot.uptime_s, 1)}
        for c in snapshot.interfaces:
            fields[f"{c.ifname}.rx_packets"] = c.rx_packets
            fields[f"{c.ifname}.rx_bytes"] = c.rx_bytes
            fields[f"{c.ifname}.tx_packets"] = c.tx_packets
            fields[f"{c.ifname}.tx_bytes"] = c.tx_bytes
        fields["events"] = sum(snapshot.events_by_kind.values())
        fields["ringbuf_drops"] = sum(snapshot.ringbuf_drops_by_kind.values())
        event(log, "snapshot", **fields)

    def close(self) -> None:
        return None

"""Local read-out for a host without a control plane: the agent's own /metrics.

A collector builds the families at scrape time from a fresh snapshot, so
nothing is mirrored by hand and a scrape always sees the kernel's current
totals. The text is rendered by `exposition.py` and served by `metrics_http.py`
(HTTP/1.0 on the standard library's socketserver), without prometheus_client or
http.server: those modules say why (the idle agent's RSS, issue 16).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from sennet.agent import insight_metrics, metrics_http
from sennet.agent.exposition import CounterFamily, Family, GaugeFamily, InfoFamily, render
from sennet.agent.metrics_http import MetricsServer
from sennet.agent.sinks.fanout import own_metrics_of
from sennet.agent.sinks.protocol import OwnMetric
from sennet.agent.snapshot import Snapshot

# The control-plane address in use, failovers and failbacks so far (None: no control plane).
ControlPlaneStatus = Callable[[], tuple[str, int, int] | None]


class SnapshotCollector:
    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        agent_id: str,
        sink: Callable[[], object] = lambda: None,
        control_plane: ControlPlaneStatus = lambda: None,
    ) -> None:
        self._snapshot = snapshot
        self._agent_id = agent_id
        self._sink = sink  # its own metrics (OTLP exports, drops) are shown too
        self._control_plane = control_plane

    def collect(self) -> Iterator[Family]:
        snap = self._snapshot()
        image = snap.image_state.image
        info = InfoFamily("sennet_agent", "Agent identity and build")
        info.add_metric(
            [],
            {
                "agent_id": self._agent_id,
                "version": snap.agent_version,
                "kernel": snap.kernel_version,
                "loader": snap.loader,
                # the appliance image ("" on an ordinary host)
                "image_version": image.version if image else "",
                "image_digest": image.digest if image else "",
                "slot": image.slot if image else "",
            },
        )
        yield info
        yield GaugeFamily(
            "sennet_agent_uptime_seconds", "Seconds since agent start", value=snap.uptime_s
        )
        packets = CounterFamily(
            "sennet_agent_packets",
            "Packets seen by the TC programs",
            labels=["interface", "direction"],
        )
        octets = CounterFamily(
            "sennet_agent_bytes",
            "Bytes on the wire seen by the TC programs (VLAN tags and aggregate segments counted)",
            labels=["interface", "direction"],
        )
        for c in snap.interfaces:
            packets.add_metric([c.ifname, "rx"], c.rx_packets)
            packets.add_metric([c.ifname, "tx"], c.tx_packets)
            octets.add_metric([c.ifname, "rx"], c.rx_bytes)
            octets.add_metric([c.ifname, "tx"], c.tx_bytes)
        yield packets
        yield octets
        events = CounterFamily("sennet_agent_events", "Events detected, by kind", labels=["kind"])
        drops = CounterFamily(
            "sennet_agent_ringbuf_drops",
            "Events lost because the ring buffer was full",
            labels=["kind"],
        )
        for kind, n in sorted(snap.events_by_kind.items()):
            events.add_metric([kind], n)
        for kind, n in sorted(snap.ringbuf_drops_by_kind.items()):
            drops.add_metric([kind], n)
        yield events
        yield drops
        yield CounterFamily(
            "sennet_agent_events_consumed",
            "Events decoded by this agent process",
            value=snap.events_consumed,
        )
        yield from insight_metrics.families(snap)
        sink = self._sink()
        yield from own_families(own_metrics_of([sink] if sink is not None else []))

        cp = self._control_plane()
        if cp is not None:
            address, failovers, failbacks = cp
            yield InfoFamily(
                "sennet_agent_control_plane",
                "The control-plane address heartbeats go to now",
                value={"address": address},
            )
            yield CounterFamily(
                "sennet_agent_control_plane_failovers",
                "Moves to the next control-plane address after a transport failure",
                value=failovers,
            )
            yield CounterFamily(
                "sennet_agent_control_plane_failbacks",
                "Returns to the first control-plane address once it answered again",
                value=failbacks,
            )


def own_families(metrics: list[OwnMetric]) -> Iterator[Family]:
    """A sink's own metrics in Prometheus form: dots become underscores."""
    for m in metrics:
        name = m.name.replace(".", "_")
        labels = sorted({k for attrs, _ in m.points for k, _ in attrs})
        family: CounterFamily | GaugeFamily = (
            CounterFamily(name, m.help, labels=labels)
            if m.kind == "counter"
            else GaugeFamily(name, m.help, labels=labels)
        )
        for attrs, value in m.points:
            given = dict(attrs)
            family.add_metric([given.get(k, "") for k in labels], value)
        yield family


def serve(
    listen: str,
    snapshot: Callable[[], Snapshot],
    agent_id: str,
    sink: Callable[[], object] = lambda: None,
    control_plane: ControlPlaneStatus = lambda: None,
) -> tuple[MetricsServer, threading.Thread]:
    """Start the HTTP endpoint in a daemon thread; returns (server, thread) for shutdown."""
    collector = SnapshotCollector(snapshot, agent_id, sink, control_plane)
    return metrics_http.start(listen, lambda: render(collector.collect()))

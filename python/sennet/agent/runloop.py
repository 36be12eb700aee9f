"""The agent's run loop: start the data plane, read it every interval, hand snapshots on.

Start-up order fails fast on anything the operator got wrong (config, no BPF
support) before any hook is touched. A configured interface that does not exist
yet is not such a mistake (a NIC whose driver loads late, a veth made by another
service): the agent starts with the ones present, and a netlink link watch wakes
the loop to attach the others the moment they appear (the per-interval check is
the fallback). Shutdown runs on every
exit path: the consumer's last drain, a final snapshot, then detach (if
configured) and release. SIGTERM and SIGINT only set a flag; the loop does the
work, so a signal never interrupts a half-done netlink exchange.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from sennet import __version__
from sennet.agent import heap, marks, statedir
from sennet.agent import identity as identity_mod
from sennet.agent.config import AgentConfig
from sennet.agent.counters import CounterReader
from sennet.agent.datapath import layout
from sennet.agent.datapath.linkwatch import LinkWatch
from sennet.agent.datapath.loader_types import DatapathOptions
from sennet.agent.datapath.manager import Attached, DatapathManager, kernel_release
from sennet.agent.events import RingBufferConsumer
from sennet.agent.image_state import ImageStateReader
from sennet.agent.sinks.log_sink import LogSink
from sennet.agent.sinks.protocol import SnapshotSink
from sennet.agent.snapshot import InterfaceCounters, Snapshot
from sennet.common.log import event

if TYPE_CHECKING:  # imported once counting: flows, DNS, TCP readers and /metrics wait for it
    from sennet.agent.insights import Insights

log = logging.getLogger("sennet.agent")

SinkFactory = Callable[[AgentConfig, str], SnapshotSink]


def default_sink(cfg: AgentConfig, agent_id: str) -> SnapshotSink:
    """gRPC to the control plane and/or OTLP, as configured; else a log line per interval."""
    sinks: list[SnapshotSink] = [_control_plane_sink(cfg, agent_id)] if cfg.control_plane else []
    if cfg.otlp_endpoints:
        from sennet.agent.sinks import otlp

        sinks.append(otlp.make_sink(cfg, agent_id))
    if len(sinks) == 1:
        return sinks[0]
    from sennet.agent.sinks.fanout import FanoutSink

    return FanoutSink(sinks) if sinks else LogSink()


def _control_plane_sink(cfg: AgentConfig, agent_id: str) -> SnapshotSink:
    from sennet.agent.sinks.controlplane_grpc import SinkOptions, make_sink
    from sennet.agent.update_fetch import FetchOptions, UpdateFetcher

    fetcher = UpdateFetcher(
        cfg.state_dir / statedir.AGENT_DIR,
        FetchOptions(
            max_bytes=cfg.update_max_bytes,
            base_url=cfg.control_plane_http,
            tls_ca=cfg.tls_ca,
            tls_cert=cfg.tls_cert,
            tls_key=cfg.tls_key,
            tls_server_name=cfg.tls_server_name,
        ),
    )
    return make_sink(
        control_plane=cfg.control_plane,
        bootstrap_token=cfg.bootstrap_token,
        state_dir=cfg.state_dir / statedir.AGENT_DIR,  # the only place it writes
        agent_id=agent_id,
        tls_ca=cfg.tls_ca or None,
        tls_server_name=cfg.tls_server_name or None,
        tls_cert=cfg.tls_cert or None,
        tls_key=cfg.tls_key or None,
        options=SinkOptions(
            max_queued_event_bytes=cfg.max_queued_event_bytes,
            failback_s=cfg.control_plane_failback_s,
        ),
        offers=fetcher.offered,  # offered bundles are fetched for the updater, never applied
    )


class WorkerDied(RuntimeError):
    """A thread the agent cannot work without has ended; the process must exit non-zero."""


class Agent:
    def __init__(self, cfg: AgentConfig, sink_factory: SinkFactory = default_sink) -> None:
        self.cfg = cfg
        self.sink_factory = sink_factory
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.manager = DatapathManager(
            options=DatapathOptions(
                assets_dir=cfg.bpf_dir,
                pin_dir=cfg.pin_dir,
                ringbuf_bytes=cfg.ringbuf_bytes,
                large_packet_bytes=cfg.large_packet_bytes,
                tcp_handshakes=cfg.tcp_handshakes_max,
                flow_capacity=cfg.flow_capacity,
                features=layout.features_named(cfg.features),
                xdp=cfg.attach == "xdp",
            ),
            loader=cfg.loader,
            tc_priority=cfg.tc_priority,
            attach_rx=cfg.attach,
            xdp_mode=cfg.xdp_mode,
            state_dir=cfg.state_dir,
            netns=cfg.netns,
            early_file=cfg.early_attach_file,
        )
        self.agent_id = ""
        self.attached: list[Attached] = []
        self.reader: CounterReader | None = None
        self.consumer: RingBufferConsumer | None = None
        self.insights: Insights | None = None
        self.image_state = ImageStateReader(cfg.image_env, cfg.update_status)
        self.sink: SnapshotSink | None = None
        self._threads: list[threading.Thread] = []
        self._http: Any = None
        # Set when the loop has something to do now: a link event, or a stop signal.
        self.wake = threading.Event()
        self._linkwatch: LinkWatch | None = None
        self._beats = 0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        who = None
        if self.cfg.run_as:
            from sennet.agent import privileges

            who = privileges.parse(self.cfg.run_as)
        # Before anything in it is read: root's zone checked, the agent's own handed over.
        statedir.prepare(self.cfg.state_dir, who.uid if who else None, who.gid if who else None)
        ident = identity_mod.load_or_create(self.cfg.state_dir)
        self.agent_id = ident.agent_id
        # Counting first: load and attach, nothing else in between. What is counted
        # meanwhile waits in the maps (counters, flows) and the ring (events) for the
        # readers set up after it; the ring holds events until the consumer starts.
        event(log, "datapath_loading", uptime=marks.uptime())
        booted = self.image_state.read().image
        self.manager.image_digest = booted.digest if booted is not None else ""
        loaded = self.manager.load(self.cfg.interfaces)
        self.attached = self.manager.attach(self.cfg.interfaces)
        event(
            log,
            "counting",
            interfaces=",".join(a.ifname for a in self.attached),
            uptime=marks.uptime(),
        )
        from sennet.agent.insights import Insights

        self.reader = CounterReader(loaded.map_fds)
        self.insights = Insights(loaded.map_fds, self.cfg)
        self.consumer = RingBufferConsumer(
            loaded.map_fds[layout.MAP_EVENTS], loaded.ringbuf_bytes, self.cfg.recent_events_max
        )
        # Opened as root (it enters cfg.netns); link notifications need no privilege after.
        self._linkwatch = LinkWatch(self.cfg.netns)
        if who is not None:
            # Before any thread starts: capabilities are per thread, later threads inherit;
            # the namespace thread, if any, is reduced through other_threads().
            from sennet.agent import privileges

            self.manager.persist_owned = False  # state_dir's top is root's from here on
            privileges.drop_to(who, self.manager.other_threads())
            event(log, "privileges_dropped", uid=who.uid, gid=who.gid, kept="CAP_NET_ADMIN")
        drain = threading.Thread(
            target=self.consumer.run, args=(self.stop,), name="ringbuf", daemon=True
        )
        drain.start()
        self._threads.append(drain)
        watch = threading.Thread(
            target=self._linkwatch.run,
            args=(self.stop, self.wake),
            name="linkwatch",
            daemon=True,
        )
        watch.start()
        self._threads.append(watch)
        if self.cfg.metrics_listen:
            from sennet.agent import readout  # the HTTP server: after counting

            self._http = readout.serve(
                self.cfg.metrics_listen,
                self.snapshot_for_scrape,
                self.agent_id,
                sink=lambda: self.sink,
                control_plane=self.control_plane_status,
            )
        event(
            log,
            "agent_ready",
            agent_id=self.agent_id,
            loader=loaded.loader,
            interfaces=",".join(a.ifname for a in self.attached),
            waiting_for=",".join(self.manager.waiting) or "none",
            interval_s=self.cfg.interval_s,
            metrics=self.cfg.metrics_listen or "off",
            control_plane=self.cfg.control_plane or "none",
            uptime=marks.uptime(),
        )

    def run(self) -> None:
        """Send a snapshot every interval until stopped; the first one right away.

        A worker thread that died (the ring-buffer drain, the local /metrics
        server) ends the loop with `WorkerDied`: an agent that goes on reporting
        counters while its events are no longer read would hide the fault, while
        an exit lets the supervisor restart it with everything working.
        """
        next_at = time.monotonic()
        while not self.stop.is_set():
            self._check_workers()
            if time.monotonic() >= next_at:
                self.beat()
                next_at += self.cfg.interval_s
                if next_at < time.monotonic():  # we fell behind (suspend, slow sink): skip ahead
                    next_at = time.monotonic() + self.cfg.interval_s
            if self.wake.wait(max(0.0, min(0.5, next_at - time.monotonic()))):
                self.wake.clear()
                if not self.stop.is_set():
                    self._reconcile()  # an interface appeared, changed or went: now

    def control_plane_status(self) -> tuple[str, int, int] | None:
        """The address in use, failovers and failbacks, for /metrics (None before the sink)."""
        if not self.cfg.control_plane or self.sink is None:
            return None
        from sennet.agent.sinks.controlplane_grpc import GrpcSink
        from sennet.agent.sinks.fanout import FanoutSink

        sinks = self.sink.sinks if isinstance(self.sink, FanoutSink) else (self.sink,)
        for sink in sinks:
            if isinstance(sink, GrpcSink):  # beside OTLP, the fan-out holds it
                stats = sink.stats()
                return stats.control_plane, stats.failovers, stats.failbacks
        return None

    def _check_workers(self) -> None:
        workers = list(self._threads)
        if self._http is not None:
            workers.append(self._http[1])
        for thread in workers:
            if not thread.is_alive() and not self.stop.is_set():
                event(log, "worker_died", logging.ERROR, thread=thread.name)
                raise WorkerDied(thread.name)

    def _reconcile(self) -> None:
        try:
            self.manager.reconcile()  # interfaces that appeared, came back or lost a hook
        except Exception as exc:  # never let a netlink hiccup stop the counting
            event(log, "reconcile_failed", logging.WARNING, error=repr(exc))

    def beat(self) -> None:
        self._reconcile()
        if self.sink is None:
            # Built at the first beat, not in start(): the data plane is counting
            # already, and the gRPC stack's import is the slowest part of a cold
            # start on a small appliance, so "ready" does not wait for it.
            self.sink = self.sink_factory(self.cfg, self.agent_id)
        if self.insights is not None:
            self.insights.refresh(self.attached)
        self.sink.send(self.snapshot(take_recent=True))
        self._beats += 1
        if self._beats == 2:  # idle by now, with the sink (gRPC: its stack) loaded
            heap.release_freed()  # what start-up freed goes back to the kernel, once
            event(log, "footprint", rss_kib=marks.rss_kib(), uptime=marks.uptime())
        self._write_health()

    def _write_health(self) -> None:
        """health.json for the root updater (the agent's side of the update health check)."""
        from sennet.agent import health_file

        acks: list[float | None] = []
        if self.cfg.control_plane:  # the gRPC stack is imported only where it is used
            from sennet.agent.sinks.controlplane_grpc import GrpcSink
            from sennet.agent.sinks.fanout import FanoutSink

            sinks = self.sink.sinks if isinstance(self.sink, FanoutSink) else (self.sink,)
            acks = [s.stats().last_ack_unix for s in sinks if isinstance(s, GrpcSink)]
        try:
            health_file.write(
                self.cfg.state_dir / statedir.AGENT_DIR,
                self.cfg.interfaces,
                [a.ifname for a in self.attached],
                acks[0] if acks else None,
                bool(self.cfg.control_plane),
            )
        except OSError as exc:  # a full state partition must not stop the counting
            event(log, "health_file_failed", logging.WARNING, error=repr(exc))

    def shutdown(self) -> None:
        """Idempotent, runs every step even if an earlier one fails, logs each failure."""
        self.stop.set()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("join_consumer", self._join_threads),
            ("final_snapshot", self._final_beat),
            ("close_sink", lambda: self.sink.close() if self.sink else None),
            ("stop_metrics", self._stop_http),
            ("detach", self.manager.detach if self.cfg.detach_on_exit else lambda: None),
            ("close_consumer", lambda: self.consumer.close() if self.consumer else None),
            ("close_linkwatch", lambda: self._linkwatch.close() if self._linkwatch else None),
            ("close_datapath", self.manager.close),
        ]
        for name, step in steps:
            try:
                step()
            except Exception as exc:
                event(log, "shutdown_step_failed", logging.ERROR, step=name, error=repr(exc))
        self.sink = None
        self.consumer = None
        self._linkwatch = None
        event(log, "agent_stopped", detached=self.cfg.detach_on_exit)

    def _join_threads(self) -> None:
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def _final_beat(self) -> None:
        if self.sink is not None and self.reader is not None and self.consumer is not None:
            self.beat()

    def _stop_http(self) -> None:
        if self._http is not None:
            server, _thread = self._http
            server.shutdown()
            server.server_close()
            self._http = None

    # -- read-out -------------------------------------------------------------

    def snapshot(self, take_recent: bool) -> Snapshot:
        assert self.reader is not None and self.consumer is not None
        interfaces = []
        for a in self.attached:
            totals = self.reader.slot_totals(a.slot)
            rx, tx = totals[layout.Direction.RX], totals[layout.Direction.TX]
            interfaces.append(
                InterfaceCounters(a.ifname, a.ifindex, rx.packets, rx.bytes, tx.packets, tx.bytes)
            )
        detected = self.reader.by_kind(layout.MAP_EV_COUNTS)
        drops = self.reader.by_kind(layout.MAP_RB_DROPS)
        stats = self.consumer.stats()
        recent, recent_dropped = self.consumer.take_recent() if take_recent else ([], 0)
        latest = self.insights.latest if self.insights is not None else None
        return Snapshot(
            agent_version=__version__,
            kernel_version=kernel_release(),
            uptime_s=time.monotonic() - self.started,
            loader=self.cfg.loader,
            interfaces=tuple(interfaces),
            events_by_kind={k.label: v for k, v in detected.items()},
            ringbuf_drops_by_kind={k.label: v for k, v in drops.items()},
            events_consumed=stats.consumed,
            recent_events=tuple(recent),
            recent_events_dropped=recent_dropped,
            flows=latest.flows if latest else None,
            microbursts=latest.microbursts if latest else (),
            dns=latest.dns if latest else None,
            tcp=latest.tcp if latest else None,
            image_state=self.image_state.read(),
        )

    def snapshot_for_scrape(self) -> Snapshot:
        return self.snapshot(take_recent=False)


def install_signal_handlers(stop: threading.Event, wake: threading.Event) -> None:
    """SIGTERM/SIGINT set `stop`, and `wake` so a waiting loop notices at once."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        event(log, "signal", signal=signal.Signals(signum).name)
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_agent(cfg: AgentConfig, sink_factory: SinkFactory = default_sink) -> None:
    agent = Agent(cfg, sink_factory)
    install_signal_handlers(agent.stop, agent.wake)
    try:
        agent.start()
        agent.run()
    finally:
        agent.shutdown()

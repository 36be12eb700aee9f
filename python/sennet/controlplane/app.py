"""Assembles the control plane: store, fleet, writer, auth, gRPC and HTTP servers.

`ControlPlane.run()` is what `sennet-controlplane serve` calls. Start order
matters: migrate and load state before any port opens, so the first request
already sees every agent's totals; stop order is the reverse, and the writer
drains its queue before the process exits, so every acknowledged heartbeat is
on disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import time
from typing import Any

from sennet.common.files import write_atomic
from sennet.common.log import event
from sennet.controlplane.auth import Authenticator
from sennet.controlplane.bundle_http import BundleDownloads
from sennet.controlplane.calls import Calls
from sennet.controlplane.fleet import Fleet
from sennet.controlplane.grpc_server import GrpcServer
from sennet.controlplane.http_server import HttpApp, HttpServer
from sennet.controlplane.identity import Identity
from sennet.controlplane.metrics import Exposition, ServerMetrics
from sennet.controlplane.sentinel_service import SentinelService
from sennet.controlplane.settings import Settings
from sennet.controlplane.store import Store
from sennet.controlplane.update_offers import OfferBook
from sennet.controlplane.validate_insights import Limits
from sennet.controlplane.writer import HeartbeatWriter, Writer
from sennet.controlplane.writer_process import ProcessWriter

log = logging.getLogger("sennet.controlplane")


class ControlPlane:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.db)
        self.store.migrate()
        self.fleet = Fleet(self.store.load_fleet())
        self.writer: Writer
        if settings.writer_process:  # its own process, GIL and caches (writer_process.py)
            self.writer = ProcessWriter(
                self.store,
                self.fleet,
                retention_s=settings.retention_s,
                max_pending=settings.max_pending_heartbeats,
                max_series=settings.max_series_per_agent,
                log_level=settings.log_level,
            )
        else:
            self.writer = HeartbeatWriter(
                self.store,
                self.fleet,
                retention_s=settings.retention_s,
                max_pending=settings.max_pending_heartbeats,
                max_series=settings.max_series_per_agent,
            )
        self.metrics = ServerMetrics(
            agents=lambda: len(self.fleet),
            commits=lambda: self.writer.commits,
            pending=self.writer.pending,
        )
        self.identity = Identity(self.store)
        self.auth = Authenticator(self.identity, cache_s=settings.agent_token_cache)
        limits = Limits(settings.max_talkers, settings.max_dns_names)
        self.offers = OfferBook(self.store)
        self.service = SentinelService(
            self.identity, self.writer, self.fleet, self.auth, limits, self.offers
        )
        self.calls = Calls(self.service, self.auth, self.metrics, settings.max_request_bytes)
        self.exposition = Exposition(
            self.metrics, self.fleet, settings.stale_after, settings.histogram_export_step
        )
        self.http = HttpServer(
            settings.http_listen,
            HttpApp(
                self.calls,
                self.exposition,
                self.health,
                settings.body_timeout,
                BundleDownloads(self.auth, settings.db, self.offers),
            ),
            tls=settings.tls,
            idle_timeout_s=settings.idle_timeout,
            max_connections=settings.http_max_connections,
        )
        self.offers.http_port = self.http.port  # bound already; offers name it

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when the database file opens and reads and the writer is alive and committing.

        `writer.last_error` is set by a failed commit (or a failed probe while
        failing) and cleared by the next commit or probe that succeeds; a
        heartbeat refused for its own content never sets it, so one bad client
        cannot take the control plane out of a load balancer's rotation. A
        commit running past `writer.STALL_AFTER_S` (a stuck lock) is unhealthy too.
        """
        report: dict[str, Any] = {"agents": len(self.fleet)}
        db: dict[str, Any] = {"path": str(self.settings.db)}
        try:
            db["schema_version"] = self.store.probe()
            db["ok"] = True
        except Exception as exc:  # any failure to read the file means "unusable"
            db["ok"] = False
            db["error"] = f"{type(exc).__name__}: {exc}"
        writer: dict[str, Any] = {
            "alive": self.writer.alive(),
            "commits": self.writer.commits,
            "last_error": self.writer.last_error,
        }
        stalled = self.writer.stalled_for()
        if stalled:  # only when stalled, so a healthy report keeps its shape
            writer["stalled_s"] = round(stalled, 1)
        ok = (
            bool(db["ok"])
            and writer["alive"] is True
            and writer["last_error"] is None
            and not stalled
        )
        report.update(status="ok" if ok else "fail", database=db, writer=writer)
        return ok, report

    async def _watch_health(self, server: GrpcServer, every_s: float = 1.0) -> None:
        """Mirror /health into the standard gRPC health service (NOT_SERVING if the DB fails)."""
        serving = True
        while True:
            await asyncio.sleep(every_s)
            ok, report = await asyncio.to_thread(self.health)
            if ok != serving:
                serving = ok
                await server.set_serving(ok)
                event(
                    log,
                    "health_changed",
                    logging.INFO if ok else logging.ERROR,
                    serving=ok,
                    database=report["database"],
                    writer=report["writer"],
                )

    async def _refresh_fleet(self, every_s: float) -> None:
        """Other processes on the same database store heartbeats too; show theirs as well."""
        while True:
            await asyncio.sleep(every_s)
            try:
                views = await asyncio.to_thread(self.store.load_fleet)
            except sqlite3.Error as exc:
                event(log, "fleet_refresh_failed", logging.WARNING, error=str(exc))
                continue
            self.fleet.merge_newer(views)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or `stop` is set), then shut down in order."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.writer.start()
        # grpc.aio binds to the running event loop, so the server is made here, not in __init__.
        server = GrpcServer(
            self.settings.grpc_listen,
            self.calls,
            tls=self.settings.tls,
            reuse_port=self.settings.reuse_port,
            max_concurrent_calls=self.settings.max_concurrent_calls,
            handshake_timeout_s=self.settings.idle_timeout,
        )
        grpc_port = await server.start()
        http_port = await self.http.start()
        event(
            log,
            "serving",
            grpc_port=grpc_port,
            http_port=http_port,
            db=self.settings.db,
            tls=self.settings.tls is not None,
            agents=len(self.fleet),
            pid=os.getpid(),
        )
        for exposed in self.settings.plaintext_exposed:
            port, _, address = exposed.partition(" ")
            self.metrics.plaintext_exposed.labels(port).set(1)
            event(log, "insecure_plaintext", logging.WARNING, port=port, listen=address)
        if self.settings.ready_file is not None:
            ready = {"grpc_port": grpc_port, "http_port": http_port, "pid": os.getpid()}
            write_atomic(self.settings.ready_file, json.dumps(ready).encode(), mode=0o644)
        watcher = asyncio.create_task(self._watch_health(server))
        # Build the per-agent text layouts now, so the first scrape after a restart is as
        # fast as the rest (at 10,000 agents the cold render takes about half a second).
        warm = asyncio.create_task(asyncio.to_thread(self.exposition.render))
        refresher = None
        if self.settings.fleet_refresh > 0:
            refresher = asyncio.create_task(self._refresh_fleet(self.settings.fleet_refresh))
        await stop.wait()
        watcher.cancel()
        await warm
        if refresher is not None:
            refresher.cancel()
        started = time.monotonic()
        event(log, "stopping")
        await server.stop(grace_s=5.0)
        await self.http.stop()
        self.writer.stop()
        self.store.close()
        event(log, "stopped", seconds=round(time.monotonic() - started, 3))

"""OTLP export: the agent's snapshots as OpenTelemetry metrics and its events as log records.

Messages come from the official `opentelemetry-proto` package and are sent
with grpcio or http.client; the OpenTelemetry SDK is not used (see
docs/otlp.md for the measurement behind that choice).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sennet.common.log import event

if TYPE_CHECKING:  # config.py imports this package's settings: no import of it at run time
    from sennet.agent.config import AgentConfig
    from sennet.agent.sinks.otlp.sink import OtlpSink


def pinned_start_ns(pin_dir: Path) -> int | None:
    """When the pinned counters were created (the bpffs inode's change time), if readable.

    Cumulative series start there, so an agent restart that keeps the pins
    continues the same series, and recreated maps start new ones.
    """
    from sennet.agent.datapath import layout

    try:
        return (pin_dir / layout.MAP_COUNTERS).stat().st_ctime_ns
    except OSError:
        return None


def make_sink(cfg: AgentConfig, agent_id: str) -> OtlpSink:
    """The configured OTLP sink (its modules are imported only when OTLP is configured)."""
    from sennet.agent.sinks.otlp.settings import from_config
    from sennet.agent.sinks.otlp.sink import OtlpSink

    sink = OtlpSink(from_config(cfg), agent_id, pinned_start_ns=pinned_start_ns(cfg.pin_dir))
    event(
        logging.getLogger("sennet.agent.sinks.otlp"),
        "otlp_ready",
        endpoints=",".join(cfg.otlp_endpoints),
        queue_bytes=cfg.otlp_queue_bytes,
    )
    return sink

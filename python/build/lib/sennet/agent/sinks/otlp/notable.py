"""The agent's notable moments, taken from its own structured log.

The agent already logs every moment an operator cares about as one event
(`event=attached`, `event=enrolment_refused` ...). Rather than a second
reporting call beside each of those, the OTLP sink listens to the `sennet`
logger for a fixed set of event names and turns each into a LogRecord. Only
the names below are taken, so the sink's own failure lines never loop back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sennet.agent.sinks.otlp.logs import Notable

# log event name -> LogRecord body
NOTABLE = {
    "attached": "agent.attached",
    "reattached": "agent.reattached",
    "interface_gone": "agent.interface_gone",
    "privileges_dropped": "agent.privileges_dropped",
    "enrolled": "agent.enrolled",
    "enrolment_refused": "agent.enrolment_refused",
    "agent_token_rejected": "agent.token_rejected",
    "heartbeat_refused": "agent.heartbeat_refused",
    "reconcile_failed": "agent.reconcile_failed",
    "worker_died": "agent.worker_died",
    "signal": "agent.signal",
}


class NotableHandler(logging.Handler):
    """A logging handler passing the notable events to `deliver` (which must not log)."""

    def __init__(self, deliver: Callable[[Notable], None]) -> None:
        super().__init__(logging.INFO)
        self._deliver = deliver

    def emit(self, record: logging.LogRecord) -> None:
        name = NOTABLE.get(record.getMessage())
        if name is None:
            return
        fields = getattr(record, "fields", None) or {}
        self._deliver(
            Notable(name, int(record.created * 1e9), record.levelno, tuple(fields.items()))
        )

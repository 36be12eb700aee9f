"""Structured logging: one event per line, `key=value` pairs, secrets redacted.

Logs from an appliance are read by people on a serial console and by machines
(journald, Loki). `ts=… level=… logger=… event=… key=value` serves both. Keys
that look like secrets are redacted here, once, so no call site can leak them.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

_SECRET_MARKERS = ("token", "secret", "password", "authorization", "key_pem")


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def redact(key: str, value: object) -> object:
    """Hide values of secret-looking keys; used by the formatter and by callers that echo config."""
    if any(marker in key.lower() for marker in _SECRET_MARKERS) and value not in (None, ""):
        return "<redacted>"
    return value


class KeyValueFormatter(logging.Formatter):
    """Formats `log.info("event", extra={"fields": {...}})` as one key=value line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_quote(record.getMessage())}",
        ]
        fields: dict[str, Any] = getattr(record, "fields", {}) or {}
        for key, value in fields.items():
            parts.append(f"{key}={_quote(redact(key, value))}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup(level: str = "info") -> None:
    """Route all `sennet.*` loggers to stderr in key=value form."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("sennet")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event: `event(log, "attached", ifname="eth0")`."""
    logger.log(level, name, extra={"fields": fields})

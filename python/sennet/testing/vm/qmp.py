"""QEMU's machine protocol (QMP) on a unix socket: enough to plug a device in and pull it.

QMP is one JSON object per line each way: a greeting, `qmp_capabilities`, then
commands, each answered by `return` or `error`, with asynchronous `event`s
interleaved (skipped here). The tests need two commands, so a client library
would be more than the protocol.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


class QmpError(RuntimeError):
    """QEMU refused a command; the message is QEMU's own description."""


def execute(
    path: Path, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30.0
) -> Any:
    """Run one command on a fresh connection (QEMU restarts between boots); its `return`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        stream = sock.makefile("rwb")

        def call(name: str, args: dict[str, Any]) -> Any:
            msg: dict[str, Any] = {"execute": name}
            if args:
                msg["arguments"] = args
            stream.write(json.dumps(msg).encode() + b"\n")
            stream.flush()
            while True:
                line = stream.readline()
                if not line:
                    raise QmpError(f"{name}: QEMU closed the connection")
                answer = json.loads(line)
                if "error" in answer:
                    raise QmpError(f"{name}: {answer['error'].get('desc', answer['error'])}")
                if "return" in answer:
                    return answer["return"]

        if "QMP" not in json.loads(stream.readline()):
            raise QmpError(f"{path}: no QMP greeting")
        call("qmp_capabilities", {})
        return call(command, arguments or {})

"""The agent token: issued by the control plane at enrolment, kept across restarts.

Stored in the agent's own directory, `state_dir/agent/agent-token` (mode 0600; the
only file a dropped agent writes, see `sennet.agent.statedir`), together
with the agent ID and control-plane addresses it was issued for, so a token is
never presented to a control plane that did not issue it. Replicas listed
together serve one database, which issued the token to all of them: a stored
token holds while the configured list shares an address with the one it was
stored under (a replica added or removed is no reason to enrol again).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from sennet.common.files import write_atomic
from sennet.common.log import event

log = logging.getLogger("sennet.agent.sinks.agent_token")

TOKEN_FILE = "agent-token"


class TokenFile:
    """The agent token, persisted beside the identity (mode 0600, atomic replace)."""

    def __init__(self, state_dir: Path, agent_id: str, targets: str | Sequence[str]) -> None:
        self.path = state_dir / TOKEN_FILE
        self._agent_id = agent_id
        self._targets = (targets,) if isinstance(targets, str) else tuple(targets)

    def load(self) -> str | None:
        """The stored token if it was issued to this agent by these control-plane replicas."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            event(
                log,
                "agent_token_unreadable",
                logging.WARNING,
                path=self.path,
                error=str(exc),
            )
            return None
        stored_for = str(data.get("control_plane", "")).split(",")
        if data.get("agent_id") != self._agent_id or not set(stored_for) & set(self._targets):
            return None
        token = data.get("token")
        return token if isinstance(token, str) and token else None

    def store(self, token: str) -> None:
        """Persist atomically and durably, mode 0600 even over an existing file."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        blob = json.dumps(
            {
                "agent_id": self._agent_id,
                "control_plane": ",".join(self._targets),
                "token": token,
            }
        ).encode()
        write_atomic(self.path, blob, 0o600)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

"""health.json: what the root updater needs to judge a slot on trial, written each interval.

The agent gives up root, so it cannot tell the updater anything but through a
file in its own directory (`state_dir/agent/health.json`, 0644): the NICs it
should monitor, those it is attached to, the wall-clock time of the last
heartbeat the control plane acknowledged, whether a control plane is configured,
and this boot's id (a file left from an earlier boot must not pass a new slot).
The updater reads it as data only and decides itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from sennet.common.files import write_atomic

NAME = "health.json"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def write(
    agent_dir: Path,
    monitored: Sequence[str],
    attached: Sequence[str],
    last_ack_unix: float | None,
    control_plane: bool,
) -> None:
    data = {
        "monitored": list(monitored),
        "attached": list(attached),
        "last_ack_unix": last_ack_unix,
        "control_plane": control_plane,
        "boot_id": boot_id(),
    }
    write_atomic(agent_dir / NAME, (json.dumps(data, sort_keys=True) + "\n").encode(), 0o644)

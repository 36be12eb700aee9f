"""The health check that decides whether a slot on trial is committed or rolled back.

It passes when, within the timeout, the agent's health.json (written by the
agent each interval, for this boot: its boot_id matches) shows every monitored
NIC attached AND either a heartbeat the control plane acknowledged after this
boot began, or, when no control plane is configured or none acknowledged by
half the timeout, a local traffic self-test: frames sent out of each monitored
NIC that the data plane counts (selftest). The file is the agent's, so it is
read as data only: never through a link, a regular file, at most 64 KiB.

It fails early, before the timeout, when the agent's supervisor has seen the agent
exit MAX_AGENT_EXITS times in a row (each run under a minute) and it is not attached:
an agent that cannot start will not start by waiting, and a box on a broken slot
should be back on its good one as soon as that is certain.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_BYTES = 64 * 1024
MAX_AGENT_EXITS = 3


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str  # "heartbeat_acked", "self_test" or why it failed


def read_agent_file(path: Path, limit: int = MAX_BYTES) -> bytes | None:
    """Bytes of a file in the agent's directory: no link followed, regular only, bounded."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        return os.read(fd, limit + 1)[:limit]
    finally:
        os.close(fd)


def read_health(path: Path) -> dict[str, Any] | None:
    raw = read_agent_file(path)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def read_agent_exits(path: Path | None) -> tuple[int, int] | None:
    """(consecutive short runs that ended, the last exit status) from the supervisor's
    `exits=N status=S ran_s=R` line; None when the agent has not exited this boot."""
    raw = read_agent_file(path, 256) if path is not None else None
    if raw is None:
        return None
    fields = dict(f.split("=", 1) for f in raw.decode(errors="replace").split() if "=" in f)
    try:
        return int(fields["exits"]), int(fields["status"])
    except (KeyError, ValueError):
        return None


def boot_started_unix() -> float:
    """Wall-clock time this boot began (now minus uptime)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def _names(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def assess(
    health: dict[str, Any] | None, boot_id: str, booted_at: float
) -> tuple[str, list[str], bool, bool]:
    """(state, missing NICs, acked after boot, control plane configured) from one reading.

    state: "no_report" (none, or from an earlier boot), "not_attached", "attached".
    """
    if health is None or health.get("boot_id") != boot_id:
        return "no_report", [], False, False
    monitored, attached = _names(health.get("monitored")), set(_names(health.get("attached")))
    missing = [n for n in monitored if n not in attached]
    ack = health.get("last_ack_unix")
    acked = isinstance(ack, int | float) and not isinstance(ack, bool) and ack >= booted_at
    cp = health.get("control_plane") is True
    if not monitored or missing:
        return "not_attached", missing, acked, cp
    return "attached", [], acked, cp


def check(
    health_path: Path,
    boot_id: str,
    timeout_s: float,
    self_test: Callable[[list[str]], str | None],
    poll_s: float = 1.0,
    booted_at: float | None = None,
    agent_exits: Path | None = None,
) -> Verdict:
    """Poll health.json until it passes or `timeout_s` runs out; `self_test(nics)` returns
    None on success or the reason it failed. `agent_exits` is the supervisor's count of
    the agent's exits this boot (/run is emptied by every boot)."""
    start = time.monotonic()
    booted_at = boot_started_unix() if booted_at is None else booted_at
    last_reason = "no_health_report"
    while True:
        elapsed = time.monotonic() - start
        state, missing, acked, cp = assess(read_health(health_path), boot_id, booted_at)
        if state == "no_report":
            last_reason = "no_health_report"
        elif state == "not_attached":
            last_reason = "agent_not_attached: " + (",".join(missing) or "no monitored NIC")
        elif acked:
            return Verdict(True, "heartbeat_acked")
        elif not cp or elapsed >= timeout_s / 2:
            health = read_health(health_path) or {}
            failed = self_test(_names(health.get("monitored")))
            if failed is None:
                return Verdict(True, "self_test")
            last_reason = failed
        else:
            last_reason = "no_heartbeat_ack"
        exits = read_agent_exits(agent_exits) if state != "attached" else None
        if exits is not None and exits[0] >= MAX_AGENT_EXITS:
            return Verdict(False, f"agent_exited: {exits[0]} times, last status {exits[1]}")
        if elapsed >= timeout_s:
            return Verdict(False, last_reason)
        time.sleep(min(poll_s, max(0.0, timeout_s - elapsed)))

"""health.json, the agent's side of the update health check: a real agent on a veth, a real
control plane, the file the root updater reads (and what the updater makes of it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sennet.agent import cli
from sennet.testing.controlplane import Served
from sennet.testing.netlab import VethPair
from sennet.update import health

pytestmark = pytest.mark.kernel


def run_until(args: list[str], path: Path, done: Any) -> dict[str, Any]:
    """Run the agent in this process until `done(health)` holds (or 30 s), then SIGTERM it."""
    seen: dict[str, Any] = {}

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                seen.update(json.loads(path.read_text()))
            if seen and done(seen):
                break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert cli.main(args) == 0
    watcher.join()
    return seen


def base_args(net: VethPair, pin_root: Path, state: Path) -> list[str]:
    return [
        "run", "--interfaces", f"{net.if_a},absent0", "--netns", net.ns_a,
        "--pin-dir", str(pin_root / "sennet"), "--state-dir", str(state), "--interval-s", "0.2",
    ]  # fmt: skip


def test_without_a_control_plane(net: VethPair, pin_root: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = state / "agent" / "health.json"
    seen = run_until(base_args(net, pin_root, state), path, lambda h: True)
    assert seen == {
        "monitored": [net.if_a, "absent0"],
        "attached": [net.if_a],
        "last_ack_unix": None,
        "control_plane": False,
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
    }
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    verdict = health.assess(seen, seen["boot_id"], health.boot_started_unix())
    assert verdict == ("not_attached", ["absent0"], False, False)


def test_an_acknowledged_heartbeat_is_reported(
    net: VethPair, pin_root: Path, tmp_path: Path, fresh: Served
) -> None:
    state = tmp_path / "state"
    args = base_args(net, pin_root, state)
    args[2] = net.if_a
    args += ["--control-plane", fresh.cp.target, "--bootstrap-token", fresh.bootstrap]
    started = time.time()
    seen = run_until(args, state / "agent" / "health.json", lambda h: h["last_ack_unix"])
    assert seen["control_plane"] is True
    assert seen["attached"] == seen["monitored"] == [net.if_a]
    assert started <= seen["last_ack_unix"] <= time.time()
    assert health.assess(seen, seen["boot_id"], health.boot_started_unix()) == (
        "attached",
        [],
        True,
        True,
    )

"""The real `sennet-agent` command as a process, in a test-owned namespace or beside it.

Two ways to place it, both used: inside the monitored namespace (`netns` given:
`ip netns exec`, what a host install does) or in the root namespace with
`--netns` in its own arguments (what the appliance does: heartbeats leave by
another interface than the one counted, so counts stay exact).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sennet.testing.errors import TestFailed
from sennet.testing.process import PYTHON, LoggedProcess, owned

COMMAND = [PYTHON, "-m", "sennet.agent.cli"]
READY = "event=agent_ready"


def _placed(netns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


@contextlib.contextmanager
def agent(netns: str, args: Sequence[str], log_path: Path) -> Iterator[LoggedProcess]:
    """`sennet-agent run ARGS`, started; killed on every exit, its log printed on failure."""
    process = LoggedProcess("agent", _placed(netns, [*COMMAND, "run", *args]), log_path)
    with owned(process.start()):
        yield process


def run_cli(
    netns: str, args: Sequence[str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """One `sennet-agent ARGS` command, captured."""
    return subprocess.run(
        _placed(netns, [*COMMAND, *args]),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def status(
    netns: str, pin_dir: Path, names_from: str = "", interfaces: Sequence[str] = ()
) -> dict[str, Any]:
    """`sennet-agent status --json`: what the pinned maps hold, no agent needed.

    `names_from`: run in the root namespace (whose /sys/fs/bpf holds the pins)
    and read interface names in that namespace (`--netns`), as the appliance does.
    `interfaces`: the configured ones, so the status lists those not attached.
    """
    extra = ["--netns", names_from] if names_from else []
    if interfaces:
        extra += ["--interfaces", ",".join(interfaces)]
    result = run_cli(netns, ["status", "--json", "--pin-dir", str(pin_dir), *extra])
    if result.returncode != 0:
        raise TestFailed(f"sennet-agent status exited {result.returncode}: {result.stderr}")
    data: dict[str, Any] = json.loads(result.stdout)
    return data

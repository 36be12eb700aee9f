"""The agent's way to counting imports no netlink library.

Issue 16: pyroute2's package import alone pulls in sqlite3, asyncio,
multiprocessing and unittest.mock (about 18 MiB of the agent's RSS, and seconds
of a TCG boot); libbpf, loaded anyway, does the agent's TC and XDP netlink. The
real agent runs as the appliance runs it (`--netns`, `run_as`, the gRPC sink
enrolled), under `python -X importtime`, which lists every module imported;
pyroute2 stays a test tool only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sennet.testing.agent import COMMAND, READY
from sennet.testing.controlplane import create_bootstrap_token, running
from sennet.testing.netlab import VethPair, sh
from sennet.testing.process import PYTHON, LoggedProcess, owned

pytestmark = pytest.mark.kernel


def imported(log: str) -> set[str]:
    """Module names from `-X importtime` lines: "import time: self | cumulative | name"."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in log.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def test_the_running_agent_with_the_grpc_sink_never_imports_pyroute2(
    net: VethPair, pin_root: Path, tmp_path: Path, world_traversable: Path
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    assert COMMAND[0] == PYTHON
    argv = [
        PYTHON, "-X", "importtime", *COMMAND[1:], "run", "--interfaces", net.if_a,
        "--netns", net.ns_a, "--pin-dir", str(pin_root / "sennet"),
        "--state-dir", str(world_traversable / "state"), "--interval-s", "0.5",
        "--run-as", "65534:65534",
    ]  # fmt: skip
    with running(db, tmp_path) as cp:
        argv += ["--control-plane", cp.target, "--bootstrap-token", bootstrap]
        a = LoggedProcess("agent", argv, tmp_path / "agent.log")
        with owned(a.start()):
            a.wait_for_log(READY)
            a.wait_for_log("event=enrolled")
            out = sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, "ingress")
            assert "sennet_ingress" in out and "direct-action" in out
            assert a.stop() == 0, a.log()
        assert cp.stop() == 0
    modules = imported(a.log())
    # The check sees the whole way: attaching, the run loop, the gRPC sink, shutdown.
    assert {
        "sennet.agent.datapath.tc",
        "sennet.agent.datapath.xdp",
        "sennet.agent.runloop",
        "sennet.agent.sinks.controlplane_grpc",
        "grpc",
    } <= modules
    assert sorted(m for m in modules if m.split(".")[0] == "pyroute2") == []
    assert "event=detached" in a.log()
    for hook in ("ingress", "egress"):
        assert sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, hook).strip() == ""

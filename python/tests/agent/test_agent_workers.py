"""A worker thread the agent cannot work without dies: the agent must exit non-zero.

The supervisor on the appliance restarts an agent that exits; an agent that
keeps sending counters while nobody reads its ring buffer would hide the fault
for as long as it runs. Real kernel, real attach on a test-owned veth: only the
drain is broken, by replacing it with one that raises.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import NoReturn

import pytest

from sennet.agent import cli
from sennet.agent.events import RingBufferConsumer
from sennet.common.errors import EXIT_FAILED
from sennet.testing.netlab import VethPair, sh

pytestmark = [
    pytest.mark.kernel,
    # the drain's traceback is expected: it is the fault under test
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]


def test_a_dead_ring_buffer_drain_ends_the_agent_with_exit_1_and_a_clean_detach(
    net: VethPair,
    pin_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    def broken(self: RingBufferConsumer) -> NoReturn:
        raise RuntimeError("injected: the drain broke")

    monkeypatch.setattr(RingBufferConsumer, "drain", broken)
    args = [
        "run", "--interfaces", net.if_a, "--netns", net.ns_a,
        "--pin-dir", str(pin_root / "sennet"), "--state-dir", str(tmp_path / "state"),
        "--interval-s", "0.2",
    ]  # fmt: skip
    # An agent that does not notice would run forever: SIGTERM after 20 s makes that a
    # clean exit 0, which fails the assertion below instead of hanging the suite.
    guard = threading.Timer(20.0, os.kill, (os.getpid(), signal.SIGTERM))
    guard.start()
    try:
        code = cli.main(args)
    finally:
        guard.cancel()
    err = capfd.readouterr().err
    assert code == EXIT_FAILED == 1, err
    assert "event=consumer_failed" in err
    assert "event=worker_died" in err and "thread=ringbuf" in err
    assert "event=agent_stopped detached=True" in err
    for hook in ("ingress", "egress"):
        assert sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, hook).strip() == ""

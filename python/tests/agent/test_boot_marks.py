"""Counting first: the agent loads and attaches before anything else, and marks each step
with the guest clock (`uptime=`) the boot benchmark reads. A real agent process on a
real veth pair; the frames sent right after `counting` (before the readers, the ring
consumer and /metrics exist) are all in the first snapshot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sennet.agent import marks
from sennet.testing.agent import agent, status
from sennet.testing.netlab import VethPair
from tests.frames import cases

pytestmark = pytest.mark.kernel

ORDER = ("agent_starting", "datapath_loading", "bpf_loaded", "attached", "counting", "agent_ready")


def test_marks_read_the_kernel_clocks() -> None:
    up = float(marks.uptime())
    started = float(marks.process_started())
    assert 0 < started <= up
    assert marks.rss_kib() > 1000  # a Python process: at least a few MiB resident


def test_agent_counts_before_its_readers_start_and_marks_each_step(
    net: VethPair, pin_root: Path, tmp_path: Path
) -> None:
    args = [
        "--interfaces", net.if_a, "--pin-dir", str(pin_root / "sennet"),
        "--state-dir", str(tmp_path / "state"), "--interval-s", "0.5",
    ]  # fmt: skip
    frame = next(c.frame for c in cases() if c.name == "udp_small")
    with agent(net.ns_a, args, tmp_path / "agent.log") as a:
        a.wait_for_log("event=counting")
        net.send_to_a([frame] * 5)  # counted whatever the agent does next
        a.wait_for_log("event=footprint")
        (iface,) = status(net.ns_a, pin_root / "sennet")["interfaces"]
        assert (iface["rx_packets"], iface["rx_bytes"]) == (5, 5 * len(frame))
        assert a.stop() == 0
    log = a.log()
    lines = log.splitlines()
    at = {name: next(i for i, x in enumerate(lines) if f"event={name} " in x) for name in ORDER}
    assert [at[n] for n in ORDER] == sorted(at[n] for n in ORDER), at
    stamps = [re.search(r" uptime=(\d+\.\d+)", lines[at[n]]) for n in ORDER if n != "attached"]
    clock = [float(m.group(1)) for m in stamps if m is not None]
    assert len(clock) == len(ORDER) - 1 and clock == sorted(clock), clock
    counting = lines[at["counting"]]
    assert f" interfaces={net.if_a} " in counting
    footprint = re.search(r"event=footprint rss_kib=(\d+) uptime=\d+\.\d+", log)
    assert footprint is not None and int(footprint.group(1)) > 1000
    # Nothing counted before the readers existed was lost: the final snapshot has it all.
    last = [x for x in lines if "event=snapshot " in x][-1]
    assert f" {net.if_a}.rx_packets=5 {net.if_a}.rx_bytes={5 * len(frame)} " in last, last

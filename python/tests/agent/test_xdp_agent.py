"""The agent with `attach = xdp`: the receive side at XDP, shown by `status`, restored when
removed, gone on exit, and never put in place of someone else's XDP program.

Real agent process on a veth pair at MTU 9000, where veth refuses native XDP, so `auto`
gets generic mode (tests/agent/test_xdp.py covers native at MTU 1500). The counts are
checked against the interface's own counters (IFLA_STATS64).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sennet.agent.config import DEFAULT_ASSETS
from sennet.testing.agent import READY, agent, run_cli, status
from sennet.testing.linkstats import link_stats, settled
from sennet.testing.netlab import VethPair, sh
from tests.frames import cases

pytestmark = pytest.mark.kernel


def xdp_line(net: VethPair) -> str:
    """The `prog/xdp` part of `ip link show`: empty when no XDP program is attached."""
    out = sh("ip", "-d", "-n", net.ns_a, "link", "show", "dev", net.if_a)
    return " ".join(w for w in out.split() if w.startswith(("xdp", "prog/xdp")))


@pytest.mark.parametrize("run_as", ["", "65534:65534"], ids=["root", "dropped-to-net-admin"])
def test_agent_counts_at_xdp_shows_the_mode_restores_the_hook_and_removes_it_on_exit(
    net: VethPair, pin_root: Path, tmp_path: Path, world_traversable: Path, run_as: str
) -> None:
    frames = [c.frame for c in cases()]
    args = [
        "--interfaces", net.if_a, "--pin-dir", str(pin_root / "sennet"),
        "--state-dir", str(world_traversable / "state"), "--interval-s", "0.3",
        "--attach", "xdp", *(["--run-as", run_as] if run_as else []),
    ]  # fmt: skip
    with agent(net.ns_a, args, tmp_path / "agent.log") as a:
        a.wait_for_log(READY)
        assert "rx_hook=xdp-generic" in a.log()
        assert "event=xdp_mode_refused" in a.log()  # native first: veth refuses it at 9000
        assert xdp_line(net).startswith("xdpgeneric")
        # TC ingress holds nothing of ours: the receive side is counted once.
        assert sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, "ingress") == ""
        before = link_stats(net.ns_a, net.if_a)
        net.send_to_a(frames)
        kernel = settled(net.ns_a, net.if_a) - before
        (iface,) = status(net.ns_a, pin_root / "sennet")["interfaces"]
        assert iface["rx_hook"] == "xdp-generic"
        assert (iface["rx_packets"], iface["rx_bytes"]) == (kernel.rx_packets, kernel.rx_bytes)
        assert kernel.rx_packets == len(frames)

        sh("ip", "-n", net.ns_a, "link", "set", "dev", net.if_a, "xdpgeneric", "off")
        a.wait_for_log(f"event=reattached ifname={net.if_a}", timeout=5)
        net.send_to_a(frames[:1])
        (iface,) = status(net.ns_a, pin_root / "sennet")["interfaces"]
        assert iface["rx_packets"] == len(frames) + 1
        assert a.stop() == 0, a.log()
    assert xdp_line(net) == ""
    assert sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, "egress") == ""


def test_agent_refuses_to_replace_an_xdp_program_that_is_not_its_own(
    net: VethPair, pin_root: Path, tmp_path: Path
) -> None:
    empty = DEFAULT_ASSETS / "bench_empty.bpf.o"
    sh("ip", "-n", net.ns_a, "link", "set", "dev", net.if_a, "xdpgeneric",
       "obj", str(empty), "sec", "xdp")  # fmt: skip
    foreign = xdp_line(net)
    assert foreign.startswith("xdpgeneric")
    args = ["run", "--interfaces", net.if_a, "--pin-dir", str(pin_root / "sennet"),
            "--state-dir", str(tmp_path / "state"), "--attach", "xdp"]  # fmt: skip
    result = run_cli(net.ns_a, args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "already has an XDP program" in result.stderr
    assert xdp_line(net) == foreign  # left as it was, and nothing of ours added
    for hook in ("ingress", "egress"):
        assert sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, hook) == ""

"""A monitored interface that goes away and comes back, or loses a hook, is attached again.

Real agent process, real kernel: the veth pair is deleted and created again
under the same names (new ifindexes, as a replugged NIC gets), and a filter is
removed by hand with `tc`. Within the run loop's interval the agent attaches
again, and the interface's counters continue where they were: the pinned maps
read by `sennet-agent status` show every frame exactly once.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sennet.testing.agent import READY, agent, status
from sennet.testing.netlab import VethPair, sh
from tests.frames import cases

pytestmark = pytest.mark.kernel


def recreate(net: VethPair) -> None:
    """Delete the pair and make it again with the same names: new ifindexes, no filters."""
    net.close()  # our packet sockets were bound to the old devices
    sh("ip", "-n", net.ns_a, "link", "del", net.if_a)
    tag = uuid.uuid4().hex[:8]
    sh(
        "ip", "link", "add", f"sa{tag}", "mtu", "9000", "netns", net.ns_a, "type", "veth",
        "peer", "name", f"sb{tag}", "mtu", "9000", "netns", net.ns_b,
    )  # fmt: skip
    sh("ip", "-n", net.ns_a, "link", "set", f"sa{tag}", "name", net.if_a, "up")
    sh("ip", "-n", net.ns_b, "link", "set", f"sb{tag}", "name", net.if_b, "up")


def rx(net: VethPair, pin_root: Path) -> tuple[int, int, int]:
    (iface,) = status(net.ns_a, pin_root / "sennet")["interfaces"]
    return iface["ifindex"], iface["rx_packets"], iface["rx_bytes"]


@pytest.mark.parametrize("run_as", ["", "65534:65534"], ids=["root", "dropped-to-net-admin"])
def test_a_recreated_interface_and_a_removed_filter_are_reattached_and_counts_continue(
    net: VethPair, pin_root: Path, tmp_path: Path, world_traversable: Path, run_as: str
) -> None:
    """Also with root given up after attaching (`run_as`): CAP_NET_ADMIN alone re-attaches."""
    frame = next(c for c in cases() if c.name == "udp_small")
    args = [
        "--interfaces", net.if_a, "--pin-dir", str(pin_root / "sennet"),
        "--state-dir", str(world_traversable / "state"), "--interval-s", "0.3",
        *(["--run-as", run_as] if run_as else []),
    ]  # fmt: skip
    with agent(net.ns_a, args, tmp_path / "agent.log") as a:
        a.wait_for_log(READY)
        first_index = net.ifindex_a
        net.send_to_a([frame.frame] * 3)
        assert rx(net, pin_root) == (first_index, 3, 3 * frame.rx_len)

        recreate(net)
        assert net.ifindex_a != first_index
        a.wait_for_log(f"event=reattached ifname={net.if_a}", timeout=5)
        net.send_to_a([frame.frame] * 2)
        assert rx(net, pin_root) == (net.ifindex_a, 5, 5 * frame.rx_len)

        sh("tc", "-n", net.ns_a, "filter", "del", "dev", net.if_a, "ingress")
        a.wait_for_log(f"event=reattached ifname={net.if_a}", timeout=5, count=2)
        net.send_to_a([frame.frame])
        assert rx(net, pin_root) == (net.ifindex_a, 6, 6 * frame.rx_len)
        assert a.stop() == 0, a.log()
    for hook in ("ingress", "egress"):
        assert sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, hook).strip() == ""

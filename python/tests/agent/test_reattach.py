"""A monitored interface that goes away and comes back, loses a hook, or appears only after
the agent started, is attached (again).

Real agent process, real kernel: the veth pair is deleted and created again
under the same names (new ifindexes, as a replugged NIC gets), and a filter is
removed by hand with `tc`. Within the run loop's interval the agent attaches
again, and the interface's counters continue where they were: the pinned maps
read by `sennet-agent status` show every frame exactly once. An interface that
does not exist when the agent starts is waited for and attached the moment it
appears (a netlink link event wakes the agent, well inside two intervals), and
then counts exactly what the kernel's own interface counters show.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from sennet.testing.agent import READY, agent, status
from sennet.testing.linkstats import LinkStats, settled
from sennet.testing.netlab import VethPair, add_veth, namespace, sh
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


INTERVAL_S = 2.0  # long, so attaching within a fraction of it shows the netlink watch at work


@pytest.mark.parametrize(
    ("run_as", "netns_flag"),
    [("", False), ("65534:65534", False), ("65534:65534", True)],
    ids=["root", "dropped-to-net-admin", "dropped-with---netns-as-the-appliance-runs"],
)
def test_an_interface_that_appears_after_start_is_attached_promptly_and_counted_exactly(
    root: None,
    pin_root: Path,
    tmp_path: Path,
    world_traversable: Path,
    run_as: str,
    netns_flag: bool,
) -> None:
    """`netns_flag`: the agent runs in the host namespace and watches the monitored one."""
    frame = next(c for c in cases() if c.name == "udp_small")
    with namespace() as ns_a, namespace() as ns_b:
        net = VethPair(ns_a, ns_b, if_a="late0", if_b="peer0")
        args = [
            "--interfaces", f"lo,{net.if_a}", "--pin-dir", str(pin_root / "sennet"),
            "--state-dir", str(world_traversable / "state"), "--interval-s", str(INTERVAL_S),
            *(["--run-as", run_as] if run_as else []),
            *(["--netns", ns_a] if netns_flag else []),
        ]  # fmt: skip
        try:
            with agent("" if netns_flag else ns_a, args, tmp_path / "agent.log") as a:
                a.wait_for_log(READY)
                log = a.log()
                assert "event=attached ifname=lo " in log
                assert f"event=waiting_for_interface ifnames={net.if_a} " in log
                assert f"waiting_for={net.if_a} " in log
                assert _status(pin_root, ns_a, netns_flag, ["lo", net.if_a])["not_attached"] == [
                    net.if_a
                ]

                created = time.monotonic()
                add_veth(net)
                a.wait_for_log(f"event=attached ifname={net.if_a} ", timeout=2 * INTERVAL_S)
                took = time.monotonic() - created
                print(f"attached {took * 1000:.0f} ms after the veth was created")
                assert re.search(rf"event=attached ifname={net.if_a} .* late=True", a.log())

                net.send_to_a([frame.frame] * 7)
                net.send_from_a([frame.frame] * 4)
                kernel = settled(ns_a, net.if_a)
                assert (kernel.rx_packets, kernel.tx_packets) == (7, 4)  # nothing else crossed
                assert _counted(pin_root, ns_a, net.if_a, netns_flag) == kernel
                assert _status(pin_root, ns_a, netns_flag, ["lo", net.if_a])["not_attached"] == []
                assert a.stop() == 0, a.log()
        finally:
            net.close()


def _status(
    pin_root: Path, netns: str, from_host: bool, interfaces: list[str] | None = None
) -> dict[str, Any]:
    """`sennet-agent status`, placed as the agent was (`from_host`: the pins are in the host's
    bpffs view, the names in the monitored namespace)."""
    if from_host:
        return status("", pin_root / "sennet", names_from=netns, interfaces=interfaces or ())
    return status(netns, pin_root / "sennet", interfaces=interfaces or ())


def _counted(pin_root: Path, netns: str, ifname: str, from_host: bool) -> LinkStats:
    """The agent's counters for `ifname`, as `sennet-agent status` reads them from the pins."""
    found = _status(pin_root, netns, from_host)
    (iface,) = [i for i in found["interfaces"] if i["ifname"] == ifname]
    return LinkStats(iface["rx_packets"], iface["rx_bytes"], iface["tx_packets"], iface["tx_bytes"])

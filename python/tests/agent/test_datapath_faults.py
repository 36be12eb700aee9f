"""Faults and restarts: full ring, malformed input, agent restarts, traffic untouched."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from sennet.agent.datapath import layout, tc
from sennet.agent.datapath.libbpf import libbpf
from sennet.common.errors import UserError
from sennet.common.netns import entered
from sennet.testing.netlab import VethPair, sh
from tests.datapath_harness import running
from tests.frames import cases

pytestmark = pytest.mark.kernel

TC_ACT_UNSPEC = 0xFFFFFFFF  # -1 as the kernel's u32 retval


def test_full_ring_buffer_losses_are_counted_exactly(net: VethPair, pin_root: Path) -> None:
    large = next(c.frame for c in cases() if c.name == "large_udp")
    # One page of ring holds 4096 // 72 = 56 records; nothing drains while we send.
    with running(net, pin_root / "p", ringbuf_bytes=4096) as dp:
        net.send_to_a([large] * 100)
        detected, drops = dp.detected(), dp.drops()
        consumed = len(dp.events())
    assert detected == {"large_packet": 100}
    assert consumed == 4096 // layout.RECORD_SIZE == 56
    assert drops == {"large_packet": 100 - consumed}


def test_programs_return_no_verdict_and_leave_bytes_unchanged(
    net: VethPair, pin_root: Path
) -> None:
    """BPF_PROG_TEST_RUN on each case: verdict "no opinion" (TC_ACT_UNSPEC), bytes as sent.

    The kernel's test harness refuses frames shorter than their IP header
    (EINVAL before the program runs); those two are covered on the wire below.
    """
    lb = libbpf()
    runnable = [c for c in cases() if c.name not in ("truncated_ipv4", "truncated_ipv6")]
    with running(net, pin_root / "p") as dp:
        assert dp.manager.loaded is not None
        for prog in (dp.manager.loaded.ingress_fd, dp.manager.loaded.egress_fd):
            for c in runnable:
                retval, _, out = lb.test_run(prog, c.frame, repeat=1)
                assert (retval, out) == (TC_ACT_UNSPEC, c.frame), c.name


def test_every_frame_leaves_through_egress_byte_for_byte(net: VethPair, pin_root: Path) -> None:
    frames = [c.frame for c in cases()]
    with running(net, pin_root / "p") as dp:
        net.drain_socket("b")
        net.send_from_a(frames)
        received = net.receive_on("b", len(frames))
        assert dp.totals()["tx"] == (len(frames), sum(map(len, frames)))
    # The receiving stack strips an outer VLAN tag into metadata; restore nothing, compare the rest.
    untagged = [f for f, c in zip(frames, cases(), strict=True) if not c.vlan_outer]
    assert [r for r, c in zip(received, cases(), strict=True) if not c.vlan_outer] == untagged
    assert len(received) == len(frames)


def test_restarted_datapath_continues_the_same_counters(net: VethPair, pin_root: Path) -> None:
    frame = next(c.frame for c in cases() if c.name == "udp_small")
    with running(net, pin_root / "p", detach=False) as dp:
        net.send_to_a([frame] * 3)
        first_slot = dp.slot
    # The filters stay attached and keep counting while "the agent" is down.
    net.send_to_a([frame] * 2)
    with running(net, pin_root / "p") as dp:
        assert dp.slot == first_slot
        assert dp.totals()["rx"] == (5, 5 * 60)
        net.send_to_a([frame])
        assert dp.totals()["rx"] == (6, 6 * 60)
        attacher = tc.TcAttacher(priority=1, netns=net.ns_a)
        try:
            ifindex = net.ifindex_a
            for parent in (tc.PARENT_INGRESS, tc.PARENT_EGRESS):
                assert len(attacher.filters(ifindex, parent)) == 1, "a restart never duplicates"
        finally:
            attacher.close()


def test_unread_events_survive_a_restart_in_the_pinned_ring(net: VethPair, pin_root: Path) -> None:
    large = next(c.frame for c in cases() if c.name == "large_udp")
    with running(net, pin_root / "p", detach=False):
        net.send_to_a([large] * 3)  # nobody drains: the agent "died" with these unread
    with running(net, pin_root / "p") as dp:
        assert [e.kind.label for e in dp.events()] == ["large_packet"] * 3


def test_a_pinned_ring_of_another_size_is_refused_by_name(net: VethPair, pin_root: Path) -> None:
    with running(net, pin_root / "p", ringbuf_bytes=1 << 16):
        pass
    with pytest.raises(UserError) as info, running(net, pin_root / "p", ringbuf_bytes=1 << 17):
        pass
    assert str(info.value).startswith(
        f"pinned map {pin_root / 'p' / 'EVENTS'} has max_entries 65536"
    )


def test_detach_removes_our_filters_and_the_qdisc_we_created(net: VethPair, pin_root: Path) -> None:
    with running(net, pin_root / "p"):
        out = sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, "ingress")
        assert "sennet_ingress" in out
    assert "clsact" not in sh("tc", "-n", net.ns_a, "qdisc", "show", "dev", net.if_a)


def test_detach_leaves_a_clsact_qdisc_that_was_already_there(net: VethPair, pin_root: Path) -> None:
    sh("tc", "-n", net.ns_a, "qdisc", "add", "dev", net.if_a, "clsact")
    with running(net, pin_root / "p"):
        pass
    assert "clsact" in sh("tc", "-n", net.ns_a, "qdisc", "show", "dev", net.if_a)
    assert sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, "ingress").strip() == ""


def _address(net: VethPair) -> None:
    sh("ip", "-n", net.ns_a, "addr", "add", "10.9.0.1/24", "dev", net.if_a)
    sh("ip", "-n", net.ns_b, "addr", "add", "10.9.0.2/24", "dev", net.if_b)
    mac = {}
    for ns, ifname in ((net.ns_a, net.if_a), (net.ns_b, net.if_b)):
        mac[ns] = sh("ip", "-n", ns, "-br", "link", "show", ifname).split()[2]
    # Static neighbours: no ARP exchange, so counts stay exact.
    sh(
        "ip",
        "-n",
        net.ns_a,
        "neigh",
        "add",
        "10.9.0.2",
        "lladdr",
        mac[net.ns_b],
        "dev",
        net.if_a,
        "nud",
        "permanent",
    )
    sh(
        "ip",
        "-n",
        net.ns_b,
        "neigh",
        "add",
        "10.9.0.1",
        "lladdr",
        mac[net.ns_a],
        "dev",
        net.if_b,
        "nud",
        "permanent",
    )


def test_udp_through_the_stack_arrives_intact_and_is_counted(net: VethPair, pin_root: Path) -> None:
    _address(net)
    with entered(net.ns_a):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("10.9.0.1", 5000))
        rx.settimeout(2)
    with entered(net.ns_b):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payloads = [bytes([i]) * (100 + i) for i in range(3)]
    try:
        with running(net, pin_root / "p") as dp:
            for p in payloads:
                tx.sendto(p, ("10.9.0.1", 5000))
            assert [rx.recv(2000) for _ in payloads] == payloads
            assert dp.totals() == {
                "rx": (3, sum(14 + 20 + 8 + len(p) for p in payloads)),
                "tx": (0, 0),
            }
    finally:
        rx.close()
        tx.close()


def test_echo_replies_count_as_tx(net: VethPair, pin_root: Path) -> None:
    _address(net)
    with running(net, pin_root / "p") as dp:
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                net.ns_b,
                "ping",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                "10.9.0.1",
            ],
            check=True,
            capture_output=True,
        )
        frame = 14 + 20 + 8 + 56  # ping's default 56 data bytes
        assert dp.totals() == {"rx": (3, 3 * frame), "tx": (3, 3 * frame)}

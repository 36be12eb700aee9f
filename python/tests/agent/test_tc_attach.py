"""TC filters through libbpf: what the kernel lists, and someone else's filter left alone.

Real kernel, a veth pair in test namespaces. The filters are read back two
independent ways: the agent's own dump (`tcdump`, which its decisions rest on)
and pyroute2 (a test tool only), and both must show exactly our one filter per
hook, named the way libbpf names it: "<program>:[<program id>]".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pyroute2 import IPRoute

from sennet.agent.config import DEFAULT_ASSETS
from sennet.agent.datapath import layout, tc
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.tcdump import FilterInfo
from sennet.common.errors import UserError
from sennet.common.netns import entered
from sennet.testing.netlab import VethPair, sh
from tests.datapath_harness import running

pytestmark = pytest.mark.kernel


def pyroute2_view(net: VethPair, parent: int) -> list[tuple[int, int, str, str]]:
    """(prio, handle, kind, TCA_BPF_NAME) of each filter, as pyroute2 reads them."""
    with entered(net.ns_a), IPRoute() as ipr:
        msgs = ipr.get_filters(index=net.ifindex_a, parent=parent)
    out = []
    for m in msgs:
        if m["handle"]:
            opts = m.get_attr("TCA_OPTIONS")
            name = opts.get_attr("TCA_BPF_NAME")
            out.append(((m["info"] >> 16) & 0xFFFF, m["handle"], m.get_attr("TCA_KIND"), name))
    return out


def test_each_hook_holds_exactly_our_filter_named_by_libbpf(net: VethPair, pin_root: Path) -> None:
    with running(net, pin_root / "p") as dp:
        loaded = dp.manager.loaded
        assert loaded is not None
        for parent, fd, program in (
            (tc.PARENT_INGRESS, loaded.ingress_fd, layout.PROGRAM_INGRESS),
            (tc.PARENT_EGRESS, loaded.egress_fd, layout.PROGRAM_EGRESS),
        ):
            prog_id = libbpf().prog_id(fd)
            name = f"{program}:[{prog_id}]"
            assert dp.manager.tc.filters(net.ifindex_a, parent) == [FilterInfo(1, 1, "bpf", name)]
            assert pyroute2_view(net, parent) == [(1, 1, "bpf", name)]
        # Attaching again replaces in place: still one filter per hook, the same program.
        dp.manager.attached.clear()
        dp.manager.attach((net.if_a,))
        assert len(dp.manager.tc.filters(net.ifindex_a, tc.PARENT_INGRESS)) == 1
        assert len(dp.manager.tc.filters(net.ifindex_a, tc.PARENT_EGRESS)) == 1
    assert "clsact" not in sh("tc", "-n", net.ns_a, "qdisc", "show", "dev", net.if_a)


def test_someone_elses_filter_at_our_priority_is_refused_and_left_in_place(
    net: VethPair, pin_root: Path
) -> None:
    """A bpf filter loaded by `tc` itself (not ours by name) where our egress filter goes."""
    sh("tc", "-n", net.ns_a, "qdisc", "add", "dev", net.if_a, "clsact")
    sh(
        "tc", "-n", net.ns_a, "filter", "add", "dev", net.if_a, "egress", "prio", "1",
        "handle", "1", "bpf", "da", "obj", str(DEFAULT_ASSETS / "bench_empty.bpf.o"), "sec", "tc",
    )  # fmt: skip
    with pytest.raises(UserError) as info, running(net, pin_root / "p"):
        pass
    assert info.value.message == (
        f"ifindex {net.ifindex_a} already has a bpf filter 'bench_empty.bpf.o:[tc]' at priority 1; "
        "refusing to replace someone else's filter"
    )
    attacher = tc.TcAttacher(1, net.ns_a)
    try:
        assert attacher.filters(net.ifindex_a, tc.PARENT_EGRESS) == [
            FilterInfo(1, 1, "bpf", "bench_empty.bpf.o:[tc]")
        ]
        assert attacher.filters(net.ifindex_a, tc.PARENT_INGRESS) == []  # nothing of ours
    finally:
        attacher.close()
    assert "clsact" in sh("tc", "-n", net.ns_a, "qdisc", "show", "dev", net.if_a)


def test_calls_run_in_the_namespace_named_and_a_missing_one_is_one_clear_error(
    net: VethPair,
) -> None:
    """The namespace thread: lookups see the pair's namespace, not the caller's."""
    attacher = tc.TcAttacher(1, net.ns_a)
    try:
        assert attacher.lookup(net.if_a) == net.ifindex_a
        assert attacher.ifname(net.ifindex_a) == net.if_a
        assert attacher.lookup(net.if_b) is None  # the peer lives in the other namespace
        assert net.ifindex_a in attacher.live()
    finally:
        attacher.close()
    with pytest.raises(UserError) as info:
        tc.TcAttacher(1, "sennet-no-such-netns")
    assert info.value.message == "network namespace 'sennet-no-such-netns' does not exist"

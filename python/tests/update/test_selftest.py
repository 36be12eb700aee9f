"""The local traffic self-test on the real kernel: frames out of a veth, counted by TC."""

from __future__ import annotations

from pathlib import Path

from sennet.testing.netlab import VethPair
from sennet.update import selftest
from tests.datapath_harness import running


def test_frames_sent_out_of_an_attached_nic_are_counted(net: VethPair, pin_root: Path) -> None:
    with running(net, pin_root / "p") as dp:
        before = dp.totals()["tx"][0]
        check = selftest.for_device(pin_root / "p", net.ns_a)
        assert check([net.if_a]) is None
        assert dp.totals()["tx"][0] - before == selftest.FRAMES
        counts = selftest.tx_packets(pin_root / "p", net.ns_a)
        assert counts == {net.if_a: before + selftest.FRAMES}


def test_a_nic_the_data_plane_does_not_count_fails(net: VethPair, pin_root: Path) -> None:
    with running(net, pin_root / "p"):
        check = selftest.for_device(pin_root / "p", net.ns_a)
        # the veth's other end lives in another namespace: nothing is attached to it here
        assert check([net.if_a, "peer-missing"]) == "self_test_failed: peer-missing"


def test_no_pinned_maps_means_no_agent(tmp_path: Path) -> None:
    check = selftest.for_device(tmp_path / "no-pins", "")
    assert check(["eth1"]) == "self_test_failed: no counters (UserError)"

"""Counting before Python: the boot-time loader follows the agent's plan, the agent adopts it.

Real kernel, the real `sennet-early-attach` binary (built by bpf/build.sh from
bpf/loader/early_attach.c) run in the monitored namespace as rc.boot runs it, and
the agent's own datapath manager in the same namespace. "A reboot" here is what a
reboot leaves: no filters, nothing pinned, the plan on the state directory. The
oracle for the counts is the kernel's own interface counters (IFLA_STATS64).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sennet.agent.config import DEFAULT_ASSETS
from sennet.agent.counters import CounterReader
from sennet.agent.datapath import early, layout, tc, tcdump
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.loader_types import DatapathOptions
from sennet.agent.datapath.manager import DatapathManager
from sennet.agent.datapath.pins import remove_pins
from sennet.common.netns import entered
from sennet.testing.linkstats import LinkStats, link_stats, settled
from sennet.testing.netlab import VethPair, sh
from tests.frames import cases

pytestmark = pytest.mark.kernel

LOADER = DEFAULT_ASSETS / "sennet-early-attach"
OBJECT = DEFAULT_ASSETS / "sennet_tc.bpf.o"
FRAME = next(c.frame for c in cases() if c.name == "udp_small")  # 60 bytes


def manager(pin_dir: Path, state: Path, applied: Path, prio: int = 1) -> DatapathManager:
    """The agent's manager as the appliance configures it (TC receive side, no XDP)."""
    return DatapathManager(
        options=DatapathOptions(DEFAULT_ASSETS, pin_dir, 1 << 20, 1000, xdp=False),
        loader="libbpf",
        tc_priority=prio,
        state_dir=state,
        early_file=applied,
    )


def run_loader(
    net: VethPair, plan: Path, applied: Path, *extra: str, obj: Path = OBJECT
) -> subprocess.CompletedProcess[str]:
    """As rc.boot runs it, in the monitored namespace (only the network one: the pins stay
    on the test's own bpf filesystem)."""
    argv = ["nsenter", f"--net=/run/netns/{net.ns_a}", str(LOADER), str(plan), str(obj)]
    return subprocess.run([*argv, str(applied), *extra], capture_output=True, text=True, timeout=60)


def sennet_filters(net: VethPair) -> dict[int, list[tuple[int, str]]]:
    """(priority, name) of our filters on each hook of the monitored interface."""
    with entered(net.ns_a):
        return {
            parent: sorted(
                (f.prio, f.name)
                for f in tcdump.filters(net.ifindex_a, parent)
                if f.name.startswith("sennet")
            )
            for parent in (tc.PARENT_INGRESS, tc.PARENT_EGRESS)
        }


@pytest.fixture
def plan_of_last_boot(net: VethPair, pin_root: Path, tmp_path: Path) -> Iterator[Path]:
    """An agent ran, attached and wrote its plan; then "a reboot": no filters, no pins."""
    pin_dir, state = pin_root / "sennet", tmp_path / "state"
    with entered(net.ns_a):
        first = manager(pin_dir, state, tmp_path / "applied")
        first.load((net.if_a, "ghost0"))
        first.attach((net.if_a, "ghost0"))
        plan = state / early.PLAN_FILE
        assert plan.read_text() == first.plan((net.if_a, "ghost0"))
        assert plan.stat().st_mode & 0o777 == 0o600
        first.detach()
        first.close()
    remove_pins(pin_dir)
    assert sennet_filters(net) == {tc.PARENT_INGRESS: [], tc.PARENT_EGRESS: []}
    yield plan


def test_boot_time_load_counts_and_the_agent_adopts_it_without_losing_a_frame(
    net: VethPair, pin_root: Path, tmp_path: Path, plan_of_last_boot: Path
) -> None:
    pin_dir, applied = pin_root / "sennet", tmp_path / "applied"
    before = link_stats(net.ns_a, net.if_a)
    booted = run_loader(net, plan_of_last_boot, applied)
    assert booted.returncode == 0, booted.stderr
    assert "event=early_counting interfaces=mon0 " in booted.stdout
    assert "event=early_attach_waiting ifname=ghost0 " in booted.stdout
    net.send_to_a([FRAME] * 5)
    net.send_from_a([FRAME] * 3)
    early_filters = sennet_filters(net)
    assert [p for p, _ in early_filters[tc.PARENT_INGRESS]] == [1]
    lb = libbpf()
    flows_fd = lb.obj_get(str(pin_dir / layout.EARLY_DIR / layout.MAP_FLOWS))
    flows_id = lb.map_info(flows_fd).id
    with entered(net.ns_a):
        agent = manager(pin_dir, tmp_path / "state", applied)
        loaded = agent.load((net.if_a, "ghost0"))
        (attached,) = agent.attach((net.if_a, "ghost0"))
        assert agent.waiting == ["ghost0"]
        net.send_to_a([FRAME] * 2)
        kernel = settled(net.ns_a, net.if_a) - before
        rx, tx = (
            CounterReader(loaded.map_fds).slot_totals(attached.slot)[d] for d in layout.Direction
        )
        # Same programs (ids in the filters' names), same flow table: adopted, not reloaded.
        assert sennet_filters(net) == early_filters
        assert lb.map_info(loaded.map_fds[layout.MAP_FLOWS]).id == flows_id
        agent.detach()
        agent.close()
    assert kernel == LinkStats(7, 7 * len(FRAME), 3, 3 * len(FRAME))
    assert (rx.packets, rx.bytes, tx.packets, tx.bytes) == (7, 7 * 60, 3, 3 * 60)
    assert not (pin_dir / layout.EARLY_DIR).exists()
    assert not applied.exists()  # adopted once; a restarted agent loads its own


def test_a_changed_configuration_retires_the_boot_time_filters_and_keeps_the_counts(
    net: VethPair,
    pin_root: Path,
    tmp_path: Path,
    plan_of_last_boot: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pin_dir, applied = pin_root / "sennet", tmp_path / "applied"
    before = link_stats(net.ns_a, net.if_a)
    assert run_loader(net, plan_of_last_boot, applied).returncode == 0
    net.send_to_a([FRAME] * 4)
    caplog.set_level(logging.INFO, logger="sennet.agent.datapath")
    with entered(net.ns_a):
        agent = manager(pin_dir, tmp_path / "state", applied, prio=2)  # the change
        loaded = agent.load((net.if_a,))
        (attached,) = agent.attach((net.if_a,))
        filters = sennet_filters(net)
        net.send_to_a([FRAME])
        kernel = settled(net.ns_a, net.if_a) - before
        rx = CounterReader(loaded.map_fds).slot_totals(attached.slot)[layout.Direction.RX]
        new_plan = plan_of_last_boot.read_text()
        agent.detach()
        agent.close()
    assert kernel.rx_packets == 5
    assert (rx.packets, rx.bytes) == (5, 5 * 60)  # the pinned maps' shapes matched: kept
    assert [p for p, _ in filters[tc.PARENT_INGRESS]] == [2]
    assert [p for p, _ in filters[tc.PARENT_EGRESS]] == [2]
    assert "tc_priority=2\n" in new_plan and "interface=ghost0" not in new_plan
    assert not (pin_dir / layout.EARLY_DIR).exists()
    discarded = [
        getattr(r, "fields", {})
        for r in caplog.records
        if r.getMessage() == "early_attach_discarded"
    ]
    assert [(d["reason"], d["counts_kept"]) for d in discarded] == [("plan_changed", True)]


def test_a_load_that_fails_halfway_leaves_nothing_behind(
    net: VethPair, pin_root: Path, tmp_path: Path, plan_of_last_boot: Path
) -> None:
    """Someone else's filter (a bpf filter of another object) holds our priority and handle
    on ingress: the loader stops, removes its egress filter and its pins, and leaves the
    other filter alone."""
    pin_dir, applied = pin_root / "sennet", tmp_path / "applied"
    sh("ip", "netns", "exec", net.ns_a, "tc", "qdisc", "add", "dev", net.if_a, "clsact")
    sh(
        "ip", "netns", "exec", net.ns_a, "tc", "filter", "add", "dev", net.if_a, "ingress",
        "prio", "1", "handle", "1", "bpf", "da", "obj", str(DEFAULT_ASSETS / "bench_empty.bpf.o"),
        "sec", "tc",
    )  # fmt: skip
    failed = run_loader(net, plan_of_last_boot, applied)
    assert failed.returncode == 1
    assert "attaching to mon0: File exists" in failed.stderr
    assert "event=early_attach_failed" in failed.stdout
    assert sennet_filters(net) == {tc.PARENT_INGRESS: [], tc.PARENT_EGRESS: []}
    with entered(net.ns_a):
        (other,) = tcdump.filters(net.ifindex_a, tc.PARENT_INGRESS)
    assert (other.prio, other.kind, other.name) == (1, "bpf", "bench_empty.bpf.o:[tc]")
    assert not applied.exists()
    assert list(pin_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "extra", "status", "message"),
    [
        ("mode", (), 2, "not a root-owned regular file writable by root only"),
        ("bad_line", (), 2, 'line 27: bad entry "tc_priority=one"'),
        ("unknown_key", (), 2, 'bad entry "program=/tmp/x.o"'),
        ("pin_dir", (), 2, "pin_dir /tmp/pins is not on a bpf filesystem"),
        ("none", ("f" * 64,), 3, "why=plan_for_another_image"),
        ("other_object", (), 3, "why=plan_for_another_object"),
        ("pins_exist", (), 3, "why=pins_exist"),
    ],
)
def test_the_loader_refuses_what_it_must_not_load(
    net: VethPair,
    pin_root: Path,
    tmp_path: Path,
    plan_of_last_boot: Path,
    change: str,
    extra: tuple[str, ...],
    status: int,
    message: str,
) -> None:
    text = plan_of_last_boot.read_text()
    if change == "mode":
        plan_of_last_boot.chmod(0o666)
    elif change == "bad_line":
        text = text.replace("tc_priority=1", "tc_priority=one")
    elif change == "unknown_key":
        text += "program=/tmp/x.o\n"
    elif change == "pin_dir":
        text = "\n".join(
            "pin_dir=/tmp/pins" if x.startswith("pin_dir=") else x for x in text.splitlines()
        )
    elif change == "pins_exist":
        (pin_root / "sennet" / layout.EARLY_DIR).mkdir(parents=True)
    if change in ("bad_line", "unknown_key", "pin_dir"):
        plan_of_last_boot.write_text(text)
    obj = DEFAULT_ASSETS / "bench_empty.bpf.o" if change == "other_object" else OBJECT
    result = run_loader(net, plan_of_last_boot, tmp_path / "applied", *extra, obj=obj)
    assert result.returncode == status, (result.stdout, result.stderr)
    assert message in (result.stderr if status == 2 else result.stdout)
    assert sennet_filters(net) == {tc.PARENT_INGRESS: [], tc.PARENT_EGRESS: []}
    assert not (tmp_path / "applied").exists()


def test_no_plan_where_the_boot_time_loader_cannot_stand_in(tmp_path: Path) -> None:
    """XDP on the receive side, another namespace, bcc: no plan, and an old one is removed."""
    state = tmp_path / "state"
    state.mkdir()
    base = manager(tmp_path / "pins", state, tmp_path / "applied")
    assert "interface=eth1\n" in base.plan(("eth1",))
    for kind in ("xdp", "netns", "bcc"):
        m = manager(tmp_path / "pins", state, tmp_path / "applied")
        if kind == "xdp":
            m.attach_rx = "xdp"
        elif kind == "netns":
            m.netns = "elsewhere"
        else:
            m.loader = "bcc"
        assert m.plan(("eth1",)) == "", kind


def test_reset_removes_what_the_boot_time_loader_pinned(
    net: VethPair, pin_root: Path, tmp_path: Path, plan_of_last_boot: Path
) -> None:
    pin_dir = pin_root / "sennet"
    assert run_loader(net, plan_of_last_boot, tmp_path / "applied").returncode == 0
    early_pins = sorted(p.name for p in (pin_dir / layout.EARLY_DIR).iterdir())
    # the programs it loaded (not sennet_xdp: skipped) and every map not pinned by the plan
    assert {*layout.FLOW_MAPS, layout.PROGRAM_EGRESS, layout.PROGRAM_INGRESS} <= set(early_pins)
    assert layout.PROGRAM_XDP not in early_pins
    assert not set(early_pins) & {*layout.PINNED_MAPS, layout.MAP_EVENTS}
    removed = remove_pins(pin_dir)
    assert sorted(removed) == sorted(
        [f"{layout.EARLY_DIR}/{n}" for n in early_pins] + [*layout.PINNED_MAPS, layout.MAP_EVENTS]
    )
    assert not pin_dir.exists()


def test_the_plan_is_rewritten_only_when_it_changes_and_removed_when_there_is_none(
    tmp_path: Path,
) -> None:
    path = tmp_path / early.PLAN_FILE
    early.save_plan(path, "format=1\ninterface=eth1\n")
    first = path.stat()
    early.save_plan(path, "format=1\ninterface=eth1\n")
    assert path.stat().st_ino == first.st_ino  # not written again: same file
    early.save_plan(path, "format=1\ninterface=eth2\n")
    assert path.read_text() == "format=1\ninterface=eth2\n"
    assert path.stat().st_mode & 0o777 == 0o600
    early.save_plan(path, "")
    assert not path.exists()


def test_a_record_the_agent_cannot_trust_or_read_is_not_adopted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied = tmp_path / "early-attach.applied"
    applied.write_text("format=1\nresult.attached=eth1:3:1:1\n")
    applied.chmod(0o600)
    got = early.read_applied(applied)
    assert got == early.Applied("format=1\n", (early.EarlyAttached("eth1", 3, 1, True),))
    applied.write_text("format=1\nresult.attached=eth1:three:1:1\n")
    caplog.set_level(logging.WARNING, logger="sennet.agent.datapath")
    assert early.read_applied(applied) is None
    assert [r.getMessage() for r in caplog.records] == ["early_attach_unreadable"]
    applied.chmod(0o666)  # writable by others: refused and moved aside, never read
    assert early.read_applied(applied) is None
    assert not applied.exists()
    assert [p.name.split(".refused-")[0] for p in tmp_path.iterdir()] == [applied.name]

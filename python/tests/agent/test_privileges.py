"""After attaching, the agent runs as an unprivileged user with CAP_NET_ADMIN alone.

Real agent process, real kernel, real control plane: the oracle for what the
process holds is the kernel's own /proc/PID/status; for what it still does,
exact counters at the control plane and its TC filters gone after SIGTERM.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sennet.agent import privileges
from sennet.common.errors import UserError
from sennet.testing.agent import READY, agent
from sennet.testing.controlplane import create_bootstrap_token, running
from sennet.testing.netlab import VethPair, sh
from sennet.testing.scrape import sample
from tests.frames import cases

pytestmark = [pytest.mark.kernel, pytest.mark.integration]
NOBODY = 65534
CAP_NET_ADMIN = 1 << 12


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_the_agent_drops_to_nobody_keeping_only_net_admin_and_still_counts_and_detaches(
    net: VethPair, pin_root: Path, tmp_path: Path, world_traversable: Path
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    state = world_traversable / "state"
    batch = [c for c in cases() if c.name in ("udp_small", "icmp_echo", "arp")]
    assert len(batch) == 3
    with running(db, tmp_path) as cp:
        args = [
            "--interfaces", net.if_a, "--netns", net.ns_a,
            "--pin-dir", str(pin_root / "sennet"), "--state-dir", str(state),
            "--interval-s", "0.5", "--control-plane", cp.target, "--bootstrap-token", bootstrap,
            "--run-as", f"{NOBODY}:{NOBODY}",
        ]  # fmt: skip
        with agent("", args, tmp_path / "agent.log") as a:
            a.wait_for_log(READY)
            assert a.proc is not None
            status = proc_status(a.proc.pid)
            assert status["Uid"].split() == [str(NOBODY)] * 4
            assert status["Gid"].split() == [str(NOBODY)] * 4
            for field in ("CapEff", "CapPrm", "CapBnd"):
                assert int(status[field], 16) == CAP_NET_ADMIN, (field, status[field])
            assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
            assert status["NoNewPrivs"] == "1"
            a.wait_for_log("event=enrolled")  # the token file is written by the dropped agent
            assert (state / "agent-token").stat().st_uid == NOBODY
            agent_id = a.log().split("event=agent_ready agent_id=", 1)[1].split()[0]
            net.send_to_a([c.frame for c in batch])
            rx = {"agent": agent_id, "interface": net.if_a, "direction": "rx"}
            want = (float(len(batch)), float(sum(c.rx_len for c in batch)))

            def counted() -> bool:
                s = cp.samples()
                return (
                    sample(s, "sennet_interface_packets_total", **rx),
                    sample(s, "sennet_interface_bytes_total", **rx),
                ) == want

            cp.wait_until("exact counters from the dropped agent", counted, timeout=20)
            assert a.stop() == 0, a.log()
        assert "event=detached" in a.log()
        for hook in ("ingress", "egress"):
            assert sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, hook).strip() == ""
        assert cp.stop() == 0
    assert os.stat(state).st_uid == NOBODY


@pytest.mark.parametrize(
    ("run_as", "message"),
    [
        ("no-such-user-here", "run_as: no user 'no-such-user-here'"),
        ("1000:staff", "run_as: expected a user name or uid:gid, got '1000:staff'"),
        (":5", "run_as: expected a user name or uid:gid, got ':5'"),
    ],
)
def test_a_bad_run_as_is_one_error_naming_it(run_as: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        privileges.parse(run_as)
    assert info.value.message == message


def test_run_as_takes_a_name_or_numbers() -> None:
    assert privileges.parse("nobody") == privileges.Identity(NOBODY, 65534)
    assert privileges.parse("1000:1001") == privileges.Identity(1000, 1001)

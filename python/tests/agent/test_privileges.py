"""After attaching, the agent runs as an unprivileged user with CAP_NET_ADMIN alone.

Real agent process, real kernel, real control plane: the oracle for what the
process holds is the kernel's own /proc/PID/status; for what it still does,
exact counters at the control plane and its TC filters gone after SIGTERM.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
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
    return proc_status_of(Path(f"/proc/{pid}"))


def proc_status_of(task: Path) -> dict[str, str]:
    """/proc/PID/status or /proc/PID/task/TID/status, by field."""
    lines = (task / "status").read_text().splitlines()
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
            # The thread that holds --netns for the TC/XDP calls existed before the drop:
            # it is reduced the same way (it alone sits in the monitored namespace).
            monitored = os.stat(f"/run/netns/{net.ns_a}").st_ino
            tasks = Path(f"/proc/{a.proc.pid}/task").iterdir()
            inside = [t for t in tasks if (t / "ns" / "net").stat().st_ino == monitored]
            assert len(inside) == 1, inside
            t = proc_status_of(inside[0])
            assert [int(t[f], 16) for f in ("CapEff", "CapPrm", "CapBnd")] == [CAP_NET_ADMIN] * 3
            assert (t["NoNewPrivs"], t["Uid"].split()) == ("1", [str(NOBODY)] * 4)
            a.wait_for_log("event=enrolled")  # the token file is written by the dropped agent
            assert (state / "agent" / "agent-token").stat().st_uid == NOBODY
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
    # The agent owns its own directory only; the top, and what root reads there, stay root's.
    assert (os.stat(state).st_uid, os.stat(state / "agent").st_uid) == (0, NOBODY)
    assert {p.name: p.stat().st_uid for p in state.iterdir()} == {
        "agent": NOBODY,
        "identity.json": 0,
        "identity.json.bak": 0,
        "tc-owned.json": 0,
    }


def _start_and_stop(net: VethPair, pin_root: Path, state: Path, log: Path) -> str:
    """Run the agent (dropping to nobody) until ready, stop it; its log."""
    args = [
        "--interfaces", net.if_a, "--netns", net.ns_a, "--pin-dir", str(pin_root / "sennet"),
        "--state-dir", str(state), "--interval-s", "0.5", "--run-as", f"{NOBODY}:{NOBODY}",
    ]  # fmt: skip
    with agent("", args, log) as a:
        a.wait_for_log(READY)
        assert a.stop() == 0, a.log()
        return a.log()


def _agent_id(log: str) -> str:
    return log.split("event=agent_ready agent_id=", 1)[1].split()[0]


@pytest.mark.parametrize("layout", ["current", "older-agent-owned-top"])
def test_root_refuses_links_and_foreign_files_planted_where_it_reads_state(
    net: VethPair, pin_root: Path, tmp_path: Path, world_traversable: Path, layout: str
) -> None:
    """What a compromised agent could have left behind, tried against the next start as root.

    `older-agent-owned-top`: the state directory as earlier versions left it (the agent
    owned it all); the start takes it back before reading anything in it.
    """
    state = world_traversable / "state"
    first = _agent_id(_start_and_stop(net, pin_root, state, tmp_path / "first.log"))
    # Root's secrets, which a link would lead root to read, rewrite or hand over.
    secret = world_traversable / "secret"
    secret.write_text("3f1c2b7a-0000-4000-8000-00000000beef\n")  # would pass for an agent ID
    secret.chmod(0o600)
    victim = world_traversable / "victim"
    victim.mkdir(mode=0o700)
    (state / "identity.json").unlink()
    (state / "identity.json").symlink_to(secret)
    (state / "tc-owned.json").unlink()
    os.link(secret, state / "tc-owned.json")  # a hard link: root's own file, two names
    shutil.rmtree(state / "agent")
    (state / "agent").symlink_to(victim)  # root would hand `victim` to the agent
    backup = state / "identity.json.bak"
    if layout == "older-agent-owned-top":
        for path in (state, backup):
            os.chown(path, NOBODY, NOBODY)
        (state / "agent-token").symlink_to(secret)  # the token's place in that layout
    else:  # a file the agent could have written, among root's: refused, never trusted
        backup.write_text('{"agent_id": "3f1c2b7a-0000-4000-8000-00000000f00d"}\n')
        os.chown(backup, NOBODY, NOBODY)

    log = _start_and_stop(net, pin_root, state, tmp_path / "second.log")
    refused = dict(re.findall(r"event=state_file_refused path=(\S+) why=(\S+)", log))
    want = {
        str(state / "identity.json"): "symbolic_link",
        str(state / "tc-owned.json"): "hard_linked",
        str(state / "agent"): "not_a_directory",
    }
    if layout == "current":
        want[str(backup)] = f"owned_by_uid_{NOBODY}"
    else:  # moved into the agent's directory (a rename), then refused, never chowned
        want[str(state / "agent" / "agent-token")] = "symbolic_link"
    assert refused == want, log
    again = _agent_id(log)
    assert "beef" not in again and "f00d" not in again  # nothing read through a link or foreign
    if layout == "older-agent-owned-top":
        assert again == first  # the agent's plain backup was data, taken back
        assert "event=state_dir_reclaimed" in log
    # Nothing a link pointed at was read, changed or given away.
    assert secret.read_text().endswith("beef\n")
    assert (secret.stat().st_uid, stat.S_IMODE(secret.stat().st_mode)) == (0, 0o600)
    assert (state / "tc-owned.json").stat().st_nlink == 1  # root's own new file, not the link
    assert (victim.stat().st_uid, stat.S_IMODE(victim.stat().st_mode)) == (0, 0o700)
    assert os.stat(state).st_uid == 0
    assert (state / "agent").is_dir() and not (state / "agent").is_symlink()
    assert (state / "agent").stat().st_uid == NOBODY
    assert (state / "identity.json").lstat().st_uid == 0


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

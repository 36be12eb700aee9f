"""Inside the guest (testinfra over SSH): kernel, read-only root, supervisor, hooks, pins, ports."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

from sennet.agent.datapath import layout
from sennet.testing.vm.appliance import Appliance, image_dir
from sennet.testing.vm.guest import agent_process, processes, tc_state


def test_guest_runs_the_pinned_kernel(appliance: Appliance) -> None:
    pinned = (image_dir() / "kernel-release").read_text().strip()
    assert appliance.machine.host.check_output("uname -r") == pinned


def test_root_filesystem_is_read_only_squashfs(appliance: Appliance) -> None:
    host = appliance.machine.host
    root = [line.split() for line in host.file("/proc/mounts").content_string.splitlines()]
    (mount,) = [m for m in root if m[1] == "/"]
    assert mount[2] == "squashfs" and "ro" in mount[3].split(",")
    assert host.run("touch /sennet-write-probe").rc != 0


def test_every_block_of_the_verified_layers_is_read_once_after_counting(
    appliance: Appliance,
) -> None:
    """The layers are checked as they are read; verity-scan reads the rest, after the agent
    is counting (so the boot does not wait for it), and finds nothing changed."""
    m = appliance.machine
    m.wait_for_console(r"verity_scan_ok layer=root", timeout=240)
    console = m.console()
    scans = re.findall(r"sennet-verity-scan: event=verity_scan_ok layer=(\w+)", console)
    assert scans[:2] == ["agent", "root"], scans
    assert console.index("event=counting") < console.index("event=verity_scan_ok")
    assert "is corrupted" not in console


def test_the_state_partition_is_journaled_ext4(appliance: Appliance) -> None:
    """What must survive a power cut lives on a journaled file system (made by the build)."""
    host = appliance.machine.host
    mounts = [line.split() for line in host.file("/proc/mounts").content_string.splitlines()]
    (state,) = [m for m in mounts if m[1] == "/var/lib/sennet"]
    assert state[0] == "/dev/vda7" and state[2] == "ext4", state
    # jbd2 runs a journal per journaled file system, named after its device
    assert host.file("/proc/fs/jbd2/vda7-8/info").exists


def test_agent_runs_under_its_supervisor(appliance: Appliance) -> None:
    _pid, ppid, _args = agent_process(appliance.machine)
    parents = [p for p in processes(appliance.machine) if p[0] == ppid]
    assert len(parents) == 1 and "supervise-agent" in parents[0][2], parents


def test_the_updater_runs_below_the_agents_priority(appliance: Appliance) -> None:
    """On one core the updater's start-up must not take turns with the agent's."""
    m = appliance.machine
    agent_pid = agent_process(m)[0]
    (updater,) = [p for p in processes(m) if "sennet.update.cli daemon" in p[2]]

    def nice(pid: int) -> int:  # field 19 of /proc/PID/stat (after the parenthesised name)
        return int(m.succeed(f"cat /proc/{pid}/stat").rsplit(")", 1)[1].split()[16])

    assert (nice(agent_pid), nice(updater[0])) == (0, 10)


def test_clsact_and_both_bpf_filters_are_on_the_monitored_nic(
    appliance: Appliance,
) -> None:
    qdiscs, filters = tc_state(appliance.machine, "eth1")
    assert "clsact" in qdiscs
    # libbpf names a filter "<program>:[<program id>]"
    names = {p: [re.sub(r":\[\d+\]$", "", n) for n in fs] for p, fs in filters.items()}
    assert names == {"ingress": ["sennet_ingress"], "egress": ["sennet_egress"]}
    assert all(re.fullmatch(r"sennet_\w+:\[\d+\]", n) for fs in filters.values() for n in fs)


def test_maps_are_pinned_in_bpffs(appliance: Appliance) -> None:
    listing = appliance.machine.succeed("ls /sys/fs/bpf/sennet").split()
    # Every map the agent keeps across restarts, the ring buffer included (libbpf loader).
    assert sorted(listing) == sorted((*layout.PINNED_MAPS, layout.MAP_EVENTS))
    assert {"COUNTERS", "TCP_COUNTERS", "HANDSHAKES", "HISTOGRAMS"} <= set(listing)


def test_only_the_expected_ports_listen(appliance: Appliance) -> None:
    tcp = appliance.machine.succeed("netstat -ltn")
    local = [ln.split()[3] for ln in tcp.splitlines() if "LISTEN" in ln]
    ports = sorted({addr.rsplit(":", 1)[1] for addr in local})
    # 22: the test variant's dropbear; 9101: the agent's local /metrics.
    assert ports == ["22", "9101"]
    # /metrics on loopback only (the image's agent.toml): never on the monitored port.
    assert [addr for addr in local if addr.endswith(":9101")] == ["127.0.0.1:9101"]
    udp = appliance.machine.succeed("netstat -lun")
    assert [ln for ln in udp.splitlines() if ln.startswith("udp")] == []


CAP_NET_ADMIN = 1 << 12


def agent_status(appliance: Appliance) -> dict[str, str]:
    """The agent process's /proc/PID/status, as field -> value."""
    pid, _ppid, _args = agent_process(appliance.machine)
    text = appliance.machine.succeed(f"cat /proc/{pid}/status")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_agent_runs_as_its_own_user_with_cap_net_admin_only(appliance: Appliance) -> None:
    passwd = appliance.machine.host.file("/etc/passwd").content_string.splitlines()
    (entry,) = [line.split(":") for line in passwd if line.startswith("sennet-agent:")]
    uid, gid = int(entry[2]), int(entry[3])
    assert uid != 0 and gid != 0
    status = agent_status(appliance)
    assert [int(x) for x in status["Uid"].split()] == [uid] * 4  # real, effective, saved, fs
    assert [int(x) for x in status["Gid"].split()] == [gid] * 4
    assert status["Groups"].split() == []
    caps = {k: int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    assert caps == {
        "CapInh": 0,
        "CapPrm": CAP_NET_ADMIN,
        "CapEff": CAP_NET_ADMIN,
        "CapBnd": CAP_NET_ADMIN,
        "CapAmb": 0,
    }
    assert status["NoNewPrivs"].strip() == "1"
    # The agent writes only its own directory on the state partition (its token); the top,
    # and what root reads there at every start (identity, tc-owned.json), stay root's.
    owners = appliance.machine.succeed(
        "stat -c %u:%g /var/lib/sennet /var/lib/sennet/agent /var/lib/sennet/identity.json"
    ).split()
    assert owners == ["0:0", f"{uid}:{gid}", "0:0"]


def test_the_booted_slot_and_its_identity_are_in_run_sennet(appliance: Appliance) -> None:
    """The factory image boots slot a; rc.boot writes the UKI's identity for the agent, and
    the initramfs lists both slots' devices for the updater (test variant: vda6 = test)."""
    ident = json.loads((image_dir() / "image.json").read_text())
    host = appliance.machine.host
    env = host.file("/run/sennet/image.env")
    assert env.mode == 0o644
    assert env.content_string == (
        f"SENNET_SLOT=a\nSENNET_IMAGE_VERSION={ident['version']}\n"
        f"SENNET_IMAGE_DIGEST={ident['image_digest']}\n"
    )
    parts = dict(
        line.split("=", 1) for line in host.file("/run/sennet/partitions").content_string.split()
    )
    assert parts == {
        "esp": "/dev/vda1",
        "state": "/dev/vda7",
        "slot": "a",
        "root_a": "/dev/vda2",
        "agent_a": "/dev/vda3",
        "root_b": "/dev/vda4",
        "agent_b": "/dev/vda5",
    }


def test_the_image_openssl_verifies_a_bundle_signature_with_the_baked_keyring(
    appliance: Appliance, tmp_path: Path
) -> None:
    """Signed on the host with the development key (as images/make-bundle signs), checked
    in the guest by Debian's openssl against /usr/share/sennet/update-keys: what the
    updater relies on."""
    keys = appliance.machine.host.check_output("ls /usr/share/sennet/update-keys").split()
    assert keys == ["update.pem"]
    message = tmp_path / "manifest.json"
    message.write_bytes(b'{"format": "sennet-bundle/1"}\n')
    key = Path(__file__).resolve().parent.parent / "images" / "keys" / "dev" / "update.key"
    sig = subprocess.run(
        ["openssl", "pkeyutl", "-sign", "-inkey", str(key), "-rawin", "-in", str(message)],
        capture_output=True,
        check=True,
    ).stdout
    verify = (
        "openssl pkeyutl -verify -pubin -inkey /usr/share/sennet/update-keys/update.pem"
        " -rawin -in /tmp/m -sigfile /tmp/s"
    )
    setup = (
        f"printf %s {base64.b64encode(message.read_bytes()).decode()} | openssl base64 -d -A"
        f" > /tmp/m && printf %s {base64.b64encode(sig).decode()} | openssl base64 -d -A > /tmp/s"
    )
    host = appliance.machine.host
    assert host.run(f"{setup} && {verify}").rc == 0
    # one byte changed: refused
    assert host.run(f"{setup} && echo x >> /tmp/m && {verify}").rc != 0

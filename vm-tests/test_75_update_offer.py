"""The fleet side of updates inside the appliance: `doctor`, and an offered update end to end.

`sennet-agent doctor` runs in the booted test image as root (over SSH) and every check
passes: the pinned 6.1 kernel has BTF, rc.boot mounted bpffs, the kernel creates the
ring buffer and loads the program, clsact works in a private namespace, the clock is
QEMU's (the host's) and the state partition has room.

The end-to-end test boots its own VM through OVMF and systemd-boot (slots need the
firmware and the boot loader), publishes a signed 0.2.0 bundle on the host's control
plane for that appliance only, and waits: the agent fetches it, the updater installs it
into slot b and reboots, the health check commits it, and the control plane's /metrics
shows 0.2.0 on slot b with the outcome `committed`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import host_control_plane
from sennet.testing.controlplane import ControlPlane, cli
from sennet.testing.scrape import matching
from sennet.testing.vm.appliance import Appliance, image_dir
from sennet.testing.vm.guest import agent_id
from sennet.testing.vm.uefi import uefi_booted

REPO = Path(__file__).resolve().parents[1]
DEV_KEY = REPO / "images" / "keys" / "dev" / "update.key"
DOCTOR = "python3 -m sennet.agent.cli doctor"

CHECKS = [
    "kernel_btf",
    "bpffs",
    "bpf_ringbuf",
    "bpf_program",
    "clsact",
    "capabilities",
    "clock",
    "state_space",
]


def test_doctor_passes_every_check_inside_the_appliance(appliance: Appliance) -> None:
    out = appliance.machine.succeed(
        "python3 -m sennet.agent.cli doctor --json --config /etc/sennet/agent.toml"
    )
    doc = json.loads(out)
    assert [(c["check"], c["ok"]) for c in doc["checks"]] == [(c, True) for c in CHECKS], doc
    assert doc["ok"] is True
    metrics = appliance.machine.succeed(
        "python3 -m sennet.agent.cli doctor --metrics --config /etc/sennet/agent.toml"
    )
    for check in CHECKS:
        assert f'sennet_agent_doctor_check{{check="{check}"}} 1.0' in metrics


# -- an update offered by the control plane, end to end (own VM: UEFI, systemd-boot, slots) --


def agent_toml(cp: ControlPlane) -> bytes:
    """Provisioned settings (they replace the image's agent.toml): a short interval."""
    return (
        'interfaces = ["eth1"]\nloader = "libbpf"\nbpf_dir = "/opt/sennet/bpf"\n'
        'state_dir = "/var/lib/sennet"\ninterval_s = 2\nmetrics_listen = "127.0.0.1:9101"\n'
        f'control_plane = "10.0.2.2:{cp.grpc_port}"\nbootstrap_token = "{cp.token}"\n'
        'run_as = "sennet-agent"\nupdate_min_version = "0.1.0"\nupdate_health_timeout_s = 40\n'
    ).encode()


def image_of(cp: ControlPlane, agent: str) -> dict[str, str] | None:
    series = matching(cp.samples(), "sennet_agent_image_info", agent=agent)
    if len(series) != 1:
        return None
    (labels,) = series
    return dict(labels)


@pytest.fixture(scope="module")
def own_cp(workdir: Path) -> Iterator[ControlPlane]:
    """A control plane of this module's own: the appliances updated here must not join the
    shared one's fleet (other tests count its agents)."""
    with host_control_plane(workdir, "offer-cp") as cp:
        yield cp


def test_an_update_offered_by_the_control_plane_is_fetched_applied_and_reported(
    workdir: Path, ssh_key: Path, own_cp: ControlPlane
) -> None:
    cp = own_cp
    bundle = workdir / "offered-0.2.0.bundle"
    argv = [str(REPO / "images" / "make-bundle"), "--image", str(image_dir()), "--out", str(bundle)]
    argv += ["--variant", "test", "--version", "0.2.0", "--key", str(DEV_KEY)]
    subprocess.run(argv, check=True)
    with uefi_booted("offer", workdir, ssh_key, {"agent.toml": agent_toml(cp)}) as vm:
        m = vm.machine
        m.wait_for_ssh()
        agent = agent_id(m)
        cp.wait_until("the factory image reported", lambda: image_of(cp, agent), timeout=120)
        before = image_of(cp, agent)
        assert before is not None and (before["version"], before["slot"]) == ("0.1.0", "a")
        # offered to this appliance only: the shared VM on the same control plane is not offered
        published = cli(cp.db, "update", "publish", str(bundle), "--agent", agent)
        assert published.returncode == 0, published.stderr
        # the agent fetches it, the updater installs it into slot b and reboots (QEMU exits)
        m.wait_for_console(r"event=update_fetched version=0.2.0", timeout=300)
        m.wait_for_console(r"event=rebooting", timeout=600)
        m.wait_exit(60)
        m.start()
        m.wait_for_console(r"event=update_committed slot=b", timeout=400)
        m.wait_for_ssh()

        def committed() -> bool:
            image = image_of(cp, agent)
            outcome = matching(cp.samples(), "sennet_agent_update_last_outcome", agent=agent)
            return (
                image is not None
                and (image["version"], image["slot"]) == ("0.2.0", "b")
                and any(dict(k)["result"] == "committed" for k in outcome)
            )

        cp.wait_until("0.2.0 on slot b, committed, in /metrics", committed, timeout=120)
        (labels,) = matching(cp.samples(), "sennet_agent_update_last_outcome", agent=agent)
        got = dict(labels)
        assert (got["from_version"], got["to_version"]) == ("0.1.0", "0.2.0")
        digest = m.succeed("sed -n 's/^SENNET_IMAGE_DIGEST=//p' /run/sennet/image.env").strip()
        assert image_of(cp, agent) == {
            "agent": agent,
            "version": "0.2.0",
            "slot": "b",
            "digest": digest,
        }
        doc = json.loads(m.succeed(f"{DOCTOR} --json"))
        assert doc["ok"] is True, doc

"""The main job's default: the appliance image itself, booted in local QEMU.

Builds the image (Bazel, pinned inputs), starts the control plane on SQLite on
this host, boots the test variant of the appliance (the production root plus
an SSH server) with its management NIC on QEMU user networking and its
monitored NIC on a tap in a network namespace this script owns, then replays
ordinary and hostile traffic into the monitored NIC and prints what the
control plane reports for the appliance. It uses the VM test harness's parts
(sennet.testing.vm), so what you watch is what the tests check.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

from sennet.testing.controlplane import ControlPlane
from sennet.testing.vm.appliance import booted
from sennet.testing.vm.guest import agent_id, counters, event_totals
from sennet.testing.vm.traffic import hostile, mixed, rx_len

REPO = Path(__file__).resolve().parents[1]


def build_image() -> Path:
    """Bazel when it is installed (the hermetic build), else the same steps without it."""
    if shutil.which("bazel"):
        print("demo: bazel build //images:appliance", flush=True)
        subprocess.run(["bazel", "build", "//images:appliance"], cwd=REPO, check=True)
        return REPO / "bazel-bin" / "images"
    print("demo: images/build", flush=True)
    subprocess.run([str(REPO / "images" / "build")], check=True)
    return REPO / "build" / "image"


def run(args: argparse.Namespace, work: Path) -> None:
    import os

    os.environ["SENNET_IMAGE_DIR"] = str(build_image())
    key = work / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cp = ControlPlane(work / "controlplane.db", work, name="controlplane")
    token = cp.create_token("demo")
    cp.start()
    try:
        print(f"demo: control plane on SQLite {cp.db}")
        print(
            f"demo:   http://127.0.0.1:{cp.http_port}/health  http://127.0.0.1:{cp.http_port}/metrics"
        )
        provisioning = {
            "control_plane": f"10.0.2.2:{cp.grpc_port}",
            "bootstrap_token": token,
            "interval_s": str(int(args.interval)),
        }
        print("demo: booting the appliance in QEMU (TCG unless KVM proves usable) ...", flush=True)
        with booted("appliance", work, key, provisioning) as vm:
            vm.machine.wait_for_ssh()
            vm.machine.succeed("ip link set eth1 mtu 9000")
            ident = agent_id(vm.machine)
            print(f"demo: appliance up ({vm.accel}); agent {ident} attached to eth1")
            print(f"demo:   console log {vm.machine.console_path}")
            print(
                f"demo:   shell: ssh -i {key} -p {vm.machine.ssh_port} "
                "-o StrictHostKeyChecking=no root@127.0.0.1"
            )
            started = time.monotonic()
            frames = mixed() + [c.frame for c in hostile()]
            while not args.duration or time.monotonic() - started < args.duration:
                vm.tap.send(frames)
                time.sleep(args.interval + 1)
                c = counters(cp, ident)
                events = {k: int(v) for k, v in event_totals(cp, ident).items() if v}
                print(
                    f"demo: sent {len(frames)} frames ({sum(rx_len(f) for f in frames)} B); "
                    f"control plane: eth1 rx {c['rx_packets']:.0f} pkts / {c['rx_bytes']:.0f} B, "
                    f"events {events}",
                    flush=True,
                )
    finally:
        cp.stop()

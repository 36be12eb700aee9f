"""Replay a pcap into a running appliance's monitored NIC and compare expected with observed.

A second look at the traffic checks, for a person at a terminal: point it at a
VM the harness booted (its work directory holds `vm1.env` with the tap's
namespace and the control plane's address) and a pcap file, and it prints the
control plane's RX counters for that agent before and after, against what the
pcap should add (the bytes on the wire: each frame's whole length, VLAN tags included).

    python vm-tests/replay_pcap.py --env /tmp/sennet-vm-XXXX/vm1.env capture.pcap
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Protocol

from scapy.utils import rdpcap


class Sender(Protocol):
    def send(self, frames: list[bytes]) -> None: ...


def replay(pcap: Path, sender: Sender) -> tuple[int, int]:
    """Send every frame of the pcap; return (frames, bytes the agent must count)."""
    from sennet.testing.vm.traffic import rx_len

    frames = [bytes(p) for p in rdpcap(str(pcap))]
    sender.send(frames)
    return len(frames), sum(rx_len(f) for f in frames)


def main() -> int:
    from sennet.testing.controlplane import ControlPlane
    from sennet.testing.netlab import Tap
    from sennet.testing.vm.guest import counters

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pcap", type=Path)
    parser.add_argument(
        "--env", type=Path, required=True, help="the vmN.env file the harness wrote"
    )
    parser.add_argument("--wait", type=float, default=15.0, help="seconds to wait for heartbeats")
    args = parser.parse_args()
    env = json.loads(args.env.read_text())
    cp = ControlPlane(Path(env["db"]), Path(env["workdir"]))
    cp.grpc_port, cp.http_port = env["grpc_port"], env["http_port"]  # attach to the running one
    tap = Tap(env["tap_netns"], env["tap_ifname"], -1)
    before = counters(cp, env["agent_id"])
    sent, sent_bytes = replay(args.pcap, tap)
    tap.close_socket()
    want = (before["rx_packets"] + sent, before["rx_bytes"] + sent_bytes)
    deadline = time.monotonic() + args.wait
    seen = before
    while time.monotonic() < deadline:
        seen = counters(cp, env["agent_id"])
        if (seen["rx_packets"], seen["rx_bytes"]) == want:
            break
        time.sleep(0.5)
    print(f"{'':12}{'packets':>12}{'bytes':>14}")
    print(f"{'before':12}{before['rx_packets']:>12.0f}{before['rx_bytes']:>14.0f}")
    print(f"{'sent':12}{sent:>12}{sent_bytes:>14}")
    print(f"{'expected':12}{want[0]:>12.0f}{want[1]:>14.0f}")
    print(f"{'observed':12}{seen['rx_packets']:>12.0f}{seen['rx_bytes']:>14.0f}")
    ok = (seen["rx_packets"], seen["rx_bytes"]) == want
    print("MATCH" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

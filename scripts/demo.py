"""Sennet's main job on one machine: everything real, nothing to configure.

Default (--where vm): build the appliance image, start the control plane on
SQLite, boot the appliance in local QEMU, replay traffic into its monitored NIC
and print what the control plane reports (see scripts/demo_vm.py).

--where host: the same without the image: a veth pair between two network
namespaces this script owns, the agent attached on the host to the monitored
side, the control plane on SQLite.

Ctrl-C (or --duration) stops everything and removes what it created.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from sennet.testing.agent import READY, agent, run_cli, status
from sennet.testing.controlplane import ControlPlane, create_bootstrap_token
from sennet.testing.netlab import VethPair, sh, veth_pair
from sennet.testing.scrape import scrape

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
CP_GRPC, CP_HTTP, AGENT_HTTP = 50051, 9469, 9101  # fixed: the URLs printed stay the same
PIN_DIR = "/sys/fs/bpf/sennet-demo"

TRAFFIC = r"""
import sys
from scapy.all import Ether, IP, IPv6, TCP, UDP, ICMP, Dot1Q, Raw, sendp
e = Ether(src="02:00:00:00:00:0b", dst="02:00:00:00:00:0a")
v4 = dict(src="192.0.2.10", dst="192.0.2.20")
frames = (
    [e / IP(**v4) / UDP(sport=5353, dport=53) / Raw(b"q" * n) for n in (18, 200, 900)] * 10
    + [e / IP(**v4) / ICMP() / Raw(b"p" * 56)] * 5
    + [e / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(dport=50000) / Raw(b"t" * 100)] * 5
    + [e / Dot1Q(vlan=42) / IP(**v4) / UDP(sport=1, dport=2)] * 2
    + [e / IP(**v4) / UDP(sport=9, dport=9) / Raw(b"L" * 4000)] * 2
    + [e / IP(**v4) / TCP(dport=22, flags=f) for f in (0, "SF", "SR", "FPU")]
    + [e / IP(src="192.0.2.66", dst="192.0.2.66") / TCP(dport=139, flags="S")]
)
sendp(frames, iface=sys.argv[1], verbose=False)
print(len(frames))
"""


def send_traffic(link: VethPair) -> int:
    out = sh("ip", "netns", "exec", link.ns_b, PY, "-c", TRAFFIC, link.if_b)
    return int(out.strip() or 0)


def interface_lines(port: int) -> list[str]:
    """The control plane's non-zero interface counters, as exposition lines."""
    try:
        samples = scrape(f"http://127.0.0.1:{port}/metrics", timeout=3)
    except OSError as exc:
        return [f"(scrape failed: {exc})"]
    lines = []
    for (name, labels), value in samples.items():
        if name == "sennet_interface_packets_total" and value:
            text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{text}}} {value:.0f}")
    return lines


def run_host(args: argparse.Namespace, work: Path) -> None:
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    with contextlib.ExitStack() as stack:
        link = stack.enter_context(veth_pair(prefix="sennet-demo"))
        print(f"demo: monitored link {link.if_a} (netns {link.ns_a}) <-> {link.if_b} ({link.ns_b})")
        agent_args: list[str] = []
        if not args.no_control_plane:
            db = work / "sennet.db"
            token = create_bootstrap_token(db, "demo")
            cp = ControlPlane(db, work, name="controlplane")
            stack.callback(cp.process.kill)  # after the graceful stop below, if that failed
            cp.start(grpc_port=CP_GRPC, http_port=CP_HTTP)
            stack.callback(cp.stop)
            print(f"demo: control plane: {cp.http}/health and /metrics; SQLite {db}")
            agent_args = ["--control-plane", cp.target, "--bootstrap-token", token]
        agent_argv = [
            "--netns", link.ns_a,
            "--interfaces", link.if_a,
            "--pin-dir", PIN_DIR,
            "--state-dir", str(work / "agent-state"),
            "--interval-s", str(args.interval),
            "--large-packet-bytes", "1514",
            "--metrics-listen", f"127.0.0.1:{AGENT_HTTP}",
            *agent_args,
        ]  # fmt: skip
        stack.callback(run_cli, "", ["reset", "--pin-dir", PIN_DIR])
        process = stack.enter_context(agent("", agent_argv, work / "agent.log"))
        stack.callback(process.stop)
        process.wait_for_log(READY)
        print(f"demo: agent attached to {link.if_a}; replaying traffic every {args.interval} s.")
        print(f"demo: agent's own metrics: http://127.0.0.1:{AGENT_HTTP}/metrics; Ctrl-C to stop")
        started = time.monotonic()
        try:
            while not stop["now"] and (
                not args.duration or time.monotonic() - started < args.duration
            ):
                sent = send_traffic(link)
                time.sleep(min(args.interval, 2.0))
                pinned = status("", Path(PIN_DIR), names_from=link.ns_a)
                (iface,) = pinned["interfaces"]
                events = {k: v for k, v in pinned["events_by_kind"].items() if v}
                print(
                    f"demo: sent {sent} frames; {link.if_a} rx {iface['rx_packets']} pkts / "
                    f"{iface['rx_bytes']} B; events {events}"
                )
                if not args.no_control_plane:
                    for line in interface_lines(cp.http_port)[:2]:
                        print("demo:   control plane", line)
                time.sleep(max(0.0, args.interval - 2.0))
        except KeyboardInterrupt:
            print("\ndemo: stopping")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--where",
        choices=("vm", "host"),
        default="vm",
        help="boot the appliance image in QEMU (default), or run the agent on this host",
    )
    parser.add_argument(
        "--duration", type=float, default=0, help="stop after this many seconds (0 = Ctrl-C)"
    )
    parser.add_argument("--interval", type=float, default=5.0, help="heartbeat interval, seconds")
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs and state here")
    parser.add_argument(
        "--no-control-plane", action="store_true", help="host mode: agent only (log, /metrics)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (BPF, TC, network namespaces, tap devices)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sennet-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.where == "vm":
            import demo_vm

            demo_vm.run(args, work)
        else:
            run_host(args, work)
    except KeyboardInterrupt:
        print("\ndemo: stopped")
    print(f"demo: logs and state kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
NS_MON, NS_PEER = "sennet-demo-mon", "sennet-demo-peer"
CP_HTTP = 9469


def sh(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: {' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


@contextlib.contextmanager
def monitored_link() -> Iterator[None]:
    for ns in (NS_MON, NS_PEER):
        sh("ip", "netns", "del", ns, check=False)
    try:
        for ns in (NS_MON, NS_PEER):
            sh("ip", "netns", "add", ns)
            sh(
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            )
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "link",
            "add",
            "sdmon",
            "netns",
            NS_MON,
            "mtu",
            "9000",
            "type",
            "veth",
            "peer",
            "name",
            "sdpeer",
            "netns",
            NS_PEER,
            "mtu",
            "9000",
        )
        sh("ip", "-n", NS_MON, "link", "set", "sdmon", "name", "mon0", "up")
        sh("ip", "-n", NS_PEER, "link", "set", "sdpeer", "name", "peer0", "up")
        print(f"demo: monitored link mon0 (netns {NS_MON}) <-> peer0 (netns {NS_PEER})")
        yield
    finally:
        for ns in (NS_MON, NS_PEER):
            sh("ip", "netns", "del", ns, check=False)


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
sendp(frames, iface="peer0", verbose=False)
print(len(frames))
"""


def send_traffic() -> int:
    out = sh("ip", "netns", "exec", NS_PEER, PY, "-c", TRAFFIC)
    return int(out.strip() or 0)


def scrape(port: int, prefix: str) -> list[str]:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read()
    except OSError as exc:
        return [f"(scrape failed: {exc})"]
    return [
        line
        for line in body.decode().splitlines()
        if line.startswith(prefix) and not line.endswith(" 0.0")
    ]


@contextlib.contextmanager
def process(argv: list[str], log: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    print(f"demo: started {name} (pid {proc.pid}), log {log}")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        print(f"demo: {name} stopped (exit {proc.returncode})")


def wait_for_file(
    path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(
                f"demo: control plane did not start; see {log}:\n{log.read_text()[-2000:]}"
            )
        time.sleep(0.1)


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise SystemExit(f"demo: process exited early; see {log}:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit(f"demo: {text!r} did not appear in {log} within {timeout} s")


def run_host(args: argparse.Namespace, work: Path) -> None:
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    have_cp = (
        not args.no_control_plane
        and shutil.which("sennet-controlplane", path=str(Path(PY).parent)) is not None
    )
    agent_port = 9101
    with contextlib.ExitStack() as stack:
        stack.enter_context(monitored_link())
        agent_env_args: list[str] = []
        if have_cp:
            cp_log = work / "controlplane.log"
            cp = str(Path(PY).parent / "sennet-controlplane")
            db = str(work / "sennet.db")
            token = sh(cp, "--db", db, "token", "create", "--name", "demo").strip()
            ready = work / "controlplane.ready"
            cp_proc = stack.enter_context(
                process(
                    [
                        cp,
                        "--db",
                        db,
                        "serve",
                        "--grpc-listen",
                        "127.0.0.1:50051",
                        "--http-listen",
                        f"127.0.0.1:{CP_HTTP}",
                        "--ready-file",
                        str(ready),
                    ],
                    cp_log,
                    "control plane (SQLite)",
                )
            )
            wait_for_file(ready, cp_proc, cp_log)
            agent_env_args = [
                "--control-plane",
                "127.0.0.1:50051",
                "--bootstrap-token",
                token,
            ]
        agent_log = work / "agent.log"
        agent_argv = [
            PY,
            "-m",
            "sennet.agent.cli",
            "run",
            "--netns",
            NS_MON,
            "--interfaces",
            "mon0",
            "--pin-dir",
            "/sys/fs/bpf/sennet-demo",
            "--state-dir",
            str(work / "agent-state"),
            "--interval-s",
            str(args.interval),
            "--large-packet-bytes",
            "1514",
            "--metrics-listen",
            f"127.0.0.1:{agent_port}",
            *agent_env_args,
        ]
        agent = stack.enter_context(process(agent_argv, agent_log, "agent"))
        wait_for(agent_log, "event=agent_ready", agent)
        stack.callback(
            sh,
            PY,
            "-m",
            "sennet.agent.cli",
            "reset",
            "--pin-dir",
            "/sys/fs/bpf/sennet-demo",
        )
        print(
            "demo: agent attached to mon0; replaying traffic every",
            args.interval,
            "s. Ctrl-C to stop.",
        )
        if have_cp:
            print(
                f"demo: control plane: http://127.0.0.1:{CP_HTTP}/health and /metrics; "
                f"SQLite {work / 'sennet.db'}"
            )
        started = time.monotonic()
        try:
            while not stop["now"] and (
                not args.duration or time.monotonic() - started < args.duration
            ):
                sent = send_traffic()
                time.sleep(min(args.interval, 2.0))
                status = json.loads(
                    sh(
                        PY,
                        "-m",
                        "sennet.agent.cli",
                        "status",
                        "--json",
                        "--netns",
                        NS_MON,
                        "--pin-dir",
                        "/sys/fs/bpf/sennet-demo",
                    )
                )
                (iface,) = status["interfaces"]
                events = {k: v for k, v in status["events_by_kind"].items() if v}
                print(
                    f"demo: sent {sent} frames; "
                    f"mon0 rx {iface['rx_packets']} pkts / {iface['rx_bytes']} B; "
                    f"events {events}"
                )
                if have_cp:
                    for line in scrape(CP_HTTP, "sennet_interface_packets_total")[:2]:
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

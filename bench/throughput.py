"""Figure 2: small-packet throughput across a veth pair, programs attached versus none.

Sender: trafgen (Debian netsniff-ng), one process on one CPU, writing 64-byte
frames into a PACKET_MMAP TX ring with the qdisc bypassed. Per packet that
costs far less than a UDP socket send (iperf3 -u pays a syscall, a socket and
the whole UDP/IP output path per datagram), so the receive path, where the
TC ingress program runs, is a large share of each packet's cost and the BPF
overhead is not hidden behind the sender. On veth the receive softirq runs on
the sending CPU (veth_xmit -> netif_rx -> softirq at local_bh_enable), so the
whole per-packet path is one CPU-bound loop: throughput falls by exactly the
share the program adds, which is what the ratio should show.

Receiver: the other end of the pair, in its own namespace, with sennet_ingress
and sennet_egress attached (both hooks, the agent's way: DatapathManager, a
clsact qdisc and direct-action filters) or nothing at all (no qdisc either).
The frames are addressed to a MAC the receiver does not own, as on a mirror
port, so the stack discards them right after TC ingress: the bare path is as
short as a real receive path gets, which makes the ratio conservative.

Counting: packets received per second from the receiving veth's own counters
(rx_packets) over a fixed window while the sender runs flat out; veth counts a
packet there only once it is queued for the receive softirq (a full backlog is
counted as a drop, reported). With the programs attached, the COUNTERS map
must have seen the same packets: counted/received is shown as a check.

With `attach = xdp` (mode "xdp"): sennet_xdp on the receiver in native mode
(veth takes it at MTU 1500) plus sennet_egress on TC egress, the agent's way
too; counted the same way, against the same bare path.

The sender runs for the whole phase; the modes alternate (with, bare, with,
bare, ...) and each ratio is taken between neighbouring windows, so slow
drifts of a shared machine cancel; the figure is the median ratio.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from sennet.agent.config import DEFAULT_ASSETS
from sennet.agent.counters import CounterReader
from sennet.agent.datapath import layout, tc
from sennet.agent.datapath.loader_types import DatapathOptions
from sennet.agent.datapath.manager import DatapathManager
from sennet.common.errors import UserError
from sennet.common.netns import entered
from sennet.common.retry import retry
from sennet.testing.figures import Figure, median
from sennet.testing.netlab import VethPair, veth_pair

import lab
import wire

SETTLE_S = 0.3  # after attach/detach, before a window opens
MODES = ("sennet", "xdp", "empty", "bare")  # one window each per round, in this order


@dataclass(frozen=True)
class LinkStats:
    rx_packets: int
    drops: int  # rx_dropped on the receiver + tx_dropped on the sender (veth backlog full)


class Counters:
    """Reads both ends' link counters through netlink sockets bound to their namespaces."""

    def __init__(self, veth: VethPair) -> None:
        with entered(veth.ns_a):
            self.rx = IPRoute()
        with entered(veth.ns_b):
            self.tx = IPRoute()
        self.rx_index = self.rx.link_lookup(ifname=veth.if_a)[0]
        self.tx_index = self.tx.link_lookup(ifname=veth.if_b)[0]

    def read(self) -> LinkStats:
        rx = self.rx.get_links(self.rx_index)[0].get_attr("IFLA_STATS64")
        tx = self.tx.get_links(self.tx_index)[0].get_attr("IFLA_STATS64")
        return LinkStats(int(rx["rx_packets"]), int(rx["rx_dropped"]) + int(tx["tx_dropped"]))

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


SENDER_CPU = 0


@contextlib.contextmanager
def trafgen(veth: VethPair, frame: bytes, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """trafgen sending `frame` round and round from the sender side until the block exits.

    trafgen forks a worker per CPU, and its parent does not reliably stop the
    worker on a signal, so it runs in its own process group and the whole
    group is stopped (INT, then KILL) on the way out.
    """
    conf = workdir / "small.trafgen"
    conf.write_text(wire.trafgen_config(frame))
    log = (workdir / "trafgen.log").open("wb")
    argv = ["ip", "netns", "exec", veth.ns_b, "taskset", "-c", str(SENDER_CPU), "trafgen"]
    argv += ["--dev", veth.if_b, "--conf", str(conf), "--cpus", "1", "--notouch-irq"]
    argv += ["--no-cpu-stats"]
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    except FileNotFoundError as exc:
        raise UserError("ip not found", hint="apt-get install iproute2 netsniff-ng") from exc
    try:
        yield proc
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGINT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + 3
        while _group_members(proc.pid) and time.monotonic() < deadline:
            proc.poll()
            time.sleep(0.05)
        if not _group_members(proc.pid):
            break
    proc.poll()


def _group_members(pgid: int) -> list[int]:
    """Live processes in a process group (zombies excluded), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _runtime_ns(pid: int) -> int:
    """CPU time a task has used (sum_exec_runtime), 0 when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0


def _ksoftirqd(cpu: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == f"ksoftirqd/{cpu}":
                    return int(entry.name)
    raise UserError(f"no ksoftirqd/{cpu} thread found")


@dataclass(frozen=True)
class Window:
    pps: float
    path_ns: float  # sender + receive-softirq CPU time per packet received
    packets: int
    drops: int


class PathClock:
    """CPU time spent on the packet path: trafgen's tasks plus ksoftirqd on the sender's CPU.

    This kernel has no IRQ time accounting, so a softirq run on the way out of
    trafgen's send (the usual case on veth) is charged to trafgen itself; what
    is deferred under load is charged to ksoftirqd. Other tenants' time is in
    neither, which is what makes this figure steady on a busy machine.
    """

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.softirqd = _ksoftirqd(SENDER_CPU)

    def read(self) -> int:
        return sum(_runtime_ns(p) for p in [*_group_members(self.pgid), self.softirqd])


def _window(counters: Counters, clock: PathClock, seconds: float) -> Window:
    t0, c0, s0 = time.monotonic(), clock.read(), counters.read()
    time.sleep(seconds)
    t1, c1, s1 = time.monotonic(), clock.read(), counters.read()
    packets = s1.rx_packets - s0.rx_packets
    return Window(packets / (t1 - t0), (c1 - c0) / max(packets, 1), packets, s1.drops - s0.drops)


def measure(pin_root: Path, rounds: int, window_s: float) -> list[Figure]:
    """Alternate attached/bare windows under a constant flood; return the ratio and its parts."""
    frame = wire.udp_frame(wire.SMALL_FRAME)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sennet-bench-")))
        veth = stack.enter_context(veth_pair(mtu=1500, if_b="gen0", prefix="snbench"))
        pin_dir = pin_root / "throughput"
        manager = DatapathManager(
            options=DatapathOptions(DEFAULT_ASSETS, pin_dir, 1 << 20, wire.LARGE_THRESHOLD),
            loader="libbpf",
            tc_priority=1,
            state_dir=work / "state",
            netns=veth.ns_a,  # attach in the receiver's namespace
        )
        stack.callback(manager.close)
        loaded = manager.load()
        counters = Counters(veth)
        stack.callback(counters.close)
        reader = CounterReader(loaded.map_fds)
        sender = stack.enter_context(trafgen(veth, frame, work))
        clock = PathClock(sender.pid)

        def flowing(last: bool) -> bool | None:
            if sender.poll() is not None:
                log = (work / "trafgen.log").read_text(errors="replace")
                raise UserError(f"trafgen exited with {sender.returncode}: {log[-400:]}")
            return True if _window(counters, clock, 0.1).packets > 0 else None

        retry(flowing, timeout=10, what="trafgen flooding the veth pair")
        empty_fd = stack.enter_context(lab.empty_program())
        windows: dict[str, list[Window]] = {mode: [] for mode in MODES}
        coverage: dict[str, list[float]] = {"sennet": [], "xdp": []}
        slot = 0
        for _ in range(rounds):
            for mode in MODES:
                if mode in ("sennet", "xdp"):
                    manager.attach_rx = "xdp" if mode == "xdp" else "tc"
                    hooked = manager.attach((veth.if_a,))[0]
                    slot = hooked.slot
                    if mode == "xdp" and hooked.rx_hook != "xdp-native":
                        raise UserError(f"veth gave {hooked.rx_hook}, not native XDP")
                elif mode == "empty":
                    _attach_empty(manager, veth, empty_fd)
                time.sleep(SETTLE_S)
                before = reader.slot_totals(slot)[layout.Direction.RX].packets
                w = _window(counters, clock, window_s)
                after = reader.slot_totals(slot)[layout.Direction.RX].packets
                if mode in ("sennet", "xdp"):
                    coverage[mode].append((after - before) / max(w.packets, 1))
                    manager.detach()
                elif mode == "empty":
                    _detach_empty(manager, veth)
                windows[mode].append(w)
        if sender.poll() is not None:
            raise UserError(f"trafgen stopped during the measurement (exit {sender.returncode})")
    return _figures(windows, coverage, rounds, window_s)


def _attach_empty(manager: DatapathManager, veth: VethPair, fd: int) -> None:
    ifindex = manager.tc.ifindex(veth.if_a)
    manager.tc.ensure_clsact(ifindex)
    for parent in (tc.PARENT_INGRESS, tc.PARENT_EGRESS):
        manager.tc.attach(ifindex, parent, fd, "sennet_empty")


def _detach_empty(manager: DatapathManager, veth: VethPair) -> None:
    ifindex = manager.tc.ifindex(veth.if_a)
    for parent in (tc.PARENT_INGRESS, tc.PARENT_EGRESS):
        manager.tc.detach(ifindex, parent)
    manager.tc.remove_clsact_if_empty(ifindex)


def _figures(
    windows: dict[str, list[Window]], coverage: dict[str, list[float]], rounds: int, window_s: float
) -> list[Figure]:
    how = f"median of {rounds} windows of {window_s:g} s"
    label = {
        "bare": "no qdisc",
        "empty": "empty program",
        "sennet": "sennet, both hooks",
        "xdp": "sennet_xdp native + TC egress",
    }
    pps = {m: [w.pps for w in ws] for m, ws in windows.items()}
    cpu = {m: [w.path_ns for w in ws] for m, ws in windows.items()}
    rate = {
        m: Figure(f"throughput.{m}", median(pps[m]), "packets/s", f"{how}, {label[m]}")
        for m in MODES
    }
    path = {
        m: Figure(f"throughput.{m}.path_cpu", median(cpu[m]), "ns/packet", "sender+softirq CPU")
        for m in MODES
    }

    def ratio(
        name: str,
        top: str,
        bottom: str,
        values: dict[str, list[float]],
        note: str,
        base: Figure,
        invert: bool = False,
    ) -> Figure:
        per = [
            (b / a if invert else a / b) for a, b in zip(values[top], values[bottom], strict=True)
        ]
        listed = " ".join(f"{r:.3f}" for r in per)
        return Figure(name, median(per), "ratio", f"{note}per round: {listed}", base)

    drops = sum(w.drops for ws in windows.values() for w in ws)
    return [
        rate["bare"],
        rate["empty"],
        rate["sennet"],
        rate["xdp"],
        ratio("throughput.ratio", "sennet", "bare", pps, "goal >= 0.95; ", rate["bare"]),
        ratio("throughput.xdp_ratio", "xdp", "bare", pps, "attach = xdp; ", rate["bare"]),
        ratio("throughput.xdp_vs_tc", "xdp", "sennet", pps, "XDP vs TC ingress; ", rate["sennet"]),
        ratio("throughput.empty_ratio", "empty", "bare", pps, "TC hook alone; ", rate["bare"]),
        ratio(
            "throughput.program_ratio",
            "sennet",
            "empty",
            pps,
            "our programs vs an empty one on the same hooks; ",
            rate["empty"],
        ),
        path["bare"],
        path["empty"],
        path["sennet"],
        path["xdp"],
        ratio(
            "throughput.cpu_ratio",
            "sennet",
            "bare",
            cpu,
            "packets per path CPU-s; ",
            path["bare"],
            invert=True,
        ),
        ratio(
            "throughput.empty_cpu_ratio",
            "empty",
            "bare",
            cpu,
            "packets per path CPU-s; ",
            path["bare"],
            invert=True,
        ),
        Figure(
            "throughput.counted_per_received",
            median(coverage["sennet"]),
            "ratio",
            "COUNTERS vs rx_packets",
        ),
        Figure(
            "throughput.xdp.counted_per_received",
            median(coverage["xdp"]),
            "ratio",
            "COUNTERS vs rx_packets (XDP native: veth counts rx at its NAPI poll)",
        ),
        Figure("throughput.drops", drops, "packets", "veth backlog drops, all windows"),
    ]

"""The agent's idle footprint: VmRSS after its second heartbeat, and where it goes.

Starts the real `sennet-agent run` on the host the way the appliance runs it: in
the root namespace with `--netns` naming a namespace this bench creates (a veth
pair inside), `--run-as 65534:65534`, local `/metrics` on loopback, and the gRPC
sink enrolled with a real control plane on loopback (`sennet.testing.controlplane`).
When the agent prints `event=footprint` (its own VmRSS after the second
heartbeat), this reads `/proc/PID/status` (VmRSS, RssAnon, RssFile, RssShmem)
and `/proc/PID/smaps` (resident KiB per mapping, grouped: the brk heap, other
anonymous mappings, BPF maps, each shared library by name), scrapes `/metrics`
once (so the scrape path is loaded too) and reads the status again, and once more
five heartbeats later (idle should stay where it is). `--log-only` starts it
without a control plane (the log sink only: no gRPC stack).

`--baseline REV` runs the agent's Python package as of git revision REV (from
`git archive`, on PYTHONPATH; the BPF objects are this tree's, built) in the same
run, alternating start by start, so the before/after figures are side by side.
Medians over `--starts` starts each.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sennet.agent.config import DEFAULT_ASSETS
from sennet.testing.controlplane import create_bootstrap_token, running
from sennet.testing.figures import Figure, median, table
from sennet.testing.netlab import bpffs, veth_pair
from sennet.testing.ports import free_port
from sennet.testing.process import PYTHON, LoggedProcess

import lab

REPO = Path(__file__).resolve().parent.parent
FOOTPRINT = re.compile(r"event=footprint\b.*\brss_kib=(\d+)")
STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
TOP_MAPPINGS = 8  # per-mapping rows shown with --detail
LATER_BEATS = 5  # heartbeats after the footprint line before the last reading


@dataclass(frozen=True)
class Start:
    footprint_kib: int  # what the agent printed itself
    status: dict[str, int]  # /proc/PID/status at that moment, KiB
    scraped: dict[str, int]  # the same after one /metrics scrape
    later: dict[str, int]  # the same after LATER_BEATS more heartbeats
    mappings: dict[str, int]  # resident KiB per mapping group (smaps)
    threads: int


def read_status(pid: int) -> tuple[dict[str, int], int]:
    """VmRSS and its split (KiB), and the thread count, from /proc/PID/status."""
    out: dict[str, int] = {}
    threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_KEYS:
            out[key] = int(value.split()[0])
        elif key == "Threads":
            threads = int(value)
    return out, threads


def _group(path: str) -> str:
    if path == "[heap]":
        return "[heap] (brk: Python objects, malloc)"
    if path.startswith("[stack"):
        return "[stack]"
    if path.startswith("anon_inode:bpf") or "bpf-map" in path:
        return "BPF maps (mmapped)"
    if path.startswith("["):
        return path
    if not path:
        return "anonymous (arenas, thread stacks, pymalloc)"
    return Path(path).name  # a shared library, the interpreter, locale data


def read_smaps(pid: int) -> dict[str, int]:
    """Resident KiB per mapping group, from /proc/PID/smaps."""
    groups: dict[str, int] = defaultdict(int)
    current = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=5)
        if first and "-" in first[0] and not first[0].endswith(":"):
            current = _group(first[5].strip() if len(first) > 5 else "")
        elif line.startswith("Rss:"):
            groups[current] += int(line.split()[1])
    return dict(groups)


@contextlib.contextmanager
def tree_at(rev: str) -> Iterator[Path]:
    """`python/` of git revision `rev` in a directory the dropped agent (uid 65534) can read."""
    with tempfile.TemporaryDirectory(prefix="sennet-before-") as tmp:
        tar = Path(tmp) / "python.tar"
        subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(tar), rev, "python"],
            check=True,
        )
        subprocess.run(["tar", "-xf", str(tar), "-C", tmp], check=True)
        tar.unlink()
        Path(tmp).chmod(0o755)
        yield Path(tmp) / "python"


def one_start(
    name: str, tree: Path | None, sink: list[str], interval_s: float, work: Path
) -> Start:
    """One agent start until its footprint line; the agent is stopped before returning.

    `sink`: the control-plane flags (none: the log sink only)."""
    port = free_port()
    tag = f"{name}-{time.monotonic_ns()}"
    state = work / f"state-{tag}"
    state.mkdir(mode=0o755)
    with veth_pair() as net, bpffs(work) as pins:
        argv = [
            PYTHON, "-m", "sennet.agent.cli", "run", "--interfaces", net.if_a,
            "--netns", net.ns_a, "--pin-dir", str(pins / "sennet"),
            "--state-dir", str(state), "--interval-s", str(interval_s),
            "--run-as", "65534:65534", "--metrics-listen", f"127.0.0.1:{port}",
            "--bpf-dir", str(DEFAULT_ASSETS),  # built, not in git: the baseline uses these too
            *sink,
        ]  # fmt: skip
        env = {"PYTHONPATH": str(tree)} if tree is not None else {}
        agent = LoggedProcess(f"agent ({name})", argv, work / f"agent-{tag}.log", env)
        agent.start()
        try:
            agent.wait_for_log("event=footprint", timeout=60 + 3 * interval_s)
            assert agent.proc is not None
            pid = agent.proc.pid
            found = FOOTPRINT.findall(agent.log())
            status, threads = read_status(pid)
            mappings = read_smaps(pid)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                if b"sennet_agent_packets" not in r.read():
                    raise RuntimeError(f"agent ({name}): /metrics has no sennet_agent_packets")
            scraped, _ = read_status(pid)
            time.sleep(LATER_BEATS * interval_s)  # idle goes on: does it stay there?
            later, _ = read_status(pid)
            if agent.stop() != 0:
                raise RuntimeError(f"agent ({name}) did not stop cleanly:\n{agent.log()}")
        finally:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait()
    return Start(int(found[-1]), status, scraped, later, mappings, threads)


def figures_of(name: str, starts: list[Start], detail: bool) -> list[Figure]:
    mib = 1024.0
    out = [Figure(f"{name}.footprint", median([s.footprint_kib for s in starts]) / mib, "MiB",
                  "the agent's own event=footprint line")]  # fmt: skip
    for key in STATUS_KEYS:
        out.append(Figure(f"{name}.{key}", median([s.status[key] for s in starts]) / mib, "MiB"))
    out.append(
        Figure(
            f"{name}.VmRSS_after_scrape",
            median([s.scraped["VmRSS"] for s in starts]) / mib,
            "MiB",
            "after one /metrics scrape",
        )
    )
    out.append(
        Figure(
            f"{name}.VmRSS_later",
            median([s.later["VmRSS"] for s in starts]) / mib,
            "MiB",
            f"{LATER_BEATS} heartbeats after that",
        )
    )
    out.append(Figure(f"{name}.threads", median([s.threads for s in starts]), "threads"))
    if detail:
        groups = sorted(
            {g for s in starts for g in s.mappings},
            key=lambda g: -median([s.mappings.get(g, 0) for s in starts]),
        )
        for g in groups[:TOP_MAPPINGS]:
            value = median([s.mappings.get(g, 0) for s in starts]) / mib
            out.append(Figure(f"{name}.rss[{g}]", value, "MiB", "smaps, resident"))
    return out


def paired(now: list[Figure], before: list[Figure]) -> list[Figure]:
    """Each figure of this tree with the baseline's figure of the same kind attached."""
    by_kind = {f.name.split(".", 1)[1]: f for f in before}
    out = []
    for f in now:
        base = by_kind.get(f.name.split(".", 1)[1])
        out.append(Figure(f.name, f.value, f.unit, f.note, base) if base is not None else f)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--starts", type=int, default=3, help="agent starts per tree (median)")
    p.add_argument("--interval-s", type=float, default=1.0, help="the agent's heartbeat interval")
    p.add_argument("--baseline", metavar="REV", help="also run the agent of git revision REV")
    p.add_argument(
        "--log-only", action="store_true", help="no control plane: the agent's log sink only"
    )
    p.add_argument("--detail", action="store_true", help="resident KiB per mapping (smaps)")
    p.add_argument("--json", action="store_true", help="one JSON object per figure per line")
    args = p.parse_args(argv)
    if args.starts < 1 or args.interval_s <= 0:
        p.error("--starts must be >= 1 and --interval-s > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    trees: list[tuple[str, Path | None]] = [("now", None)]
    with contextlib.ExitStack() as stack, lab.sigterm_as_interrupt():
        if args.baseline:
            trees.insert(0, ("before", stack.enter_context(tree_at(args.baseline))))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sennet-footprint-")))
        work.chmod(0o755)
        sink: list[str] = []
        if not args.log_only:
            db = work / "cp.db"
            bootstrap = create_bootstrap_token(db)
            cp = stack.enter_context(running(db, work))
            sink = ["--control-plane", cp.target, "--bootstrap-token", bootstrap]
        results: dict[str, list[Start]] = {name: [] for name, _ in trees}
        for i in range(args.starts):
            for name, tree in trees:
                lab.note(f"start {i + 1}/{args.starts}: {name}")
                results[name].append(one_start(name, tree, sink, args.interval_s, work))
        if not args.log_only:
            cp.stop()
    figures = figures_of("now", results["now"], args.detail)
    if args.baseline:
        figures = paired(figures, figures_of("before", results["before"], args.detail))
        figures = [b for f in figures for b in ((f.baseline,) if f.baseline else ()) + (f,)]
    if args.json:
        for f in figures:
            print(f.as_json())
    else:
        print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

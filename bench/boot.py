#!/usr/bin/env python3
"""Boot benchmark: power-on to counting to the first acknowledged heartbeat, split into phases.

Boots the production image under QEMU (the appliance's own command line, from
`sennet_image.qemu`) `--boots` times per mode, direct kernel boot and UEFI (as
flashed), with a control plane on the host's loopback (the one the VM tests use)
and `agent.toml` on the ESP naming it, as an installer would provision it. Each
console line is stamped with the host's clock when it arrives; lines that carry
`uptime=` (initramfs, init, supervisor, agent) give the guest's own clock. The
offset between the two (the smallest arrival - uptime) is where the kernel
started: before it is firmware (and QEMU's set-up), after it every phase is read
on the guest's clock. A marker an older image does not print with `uptime=` is
placed by its arrival time instead, so an image from before these marks can be
measured the same way (`--baseline DIR` boots one interleaved with the image,
and prints the ratio per phase). The first heartbeat acknowledged is the first
row the control plane committed for this boot (`heartbeats.received_at`, host
clock): it is written before the agent gets its answer.

By default (`--kind next`) each image's disk is booted once unmeasured (formatting,
provisioning, enrolment; the agent writes its plan for the boot-time loader) and then
`--boots` times, each boot ended by pulling the plug, as an edge box boots after a power
cut; `--kind first` boots a fresh disk every time. `--baseline-early-attach-off` boots the
same image with `SENNET_EARLY_ATTACH=off` on its ESP as the baseline: the path where the
agent loads and attaches at its own start.

    sudo .venv/bin/python bench/boot.py [--image DIR] [--mode direct|uefi ...] [--boots N]
                                        [--kind first|next]
                                        [--baseline DIR | --baseline-early-attach-off] [--json]

Exit status 2: operator error (no image, not root); 3: a boot never reached its
first heartbeat (no figure of that run is valid).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sennet_image import qemu
from sennet_image.disk import MIB

from sennet.testing.controlplane import ControlPlane
from sennet.testing.figures import Figure, median, report

REPO = Path(__file__).resolve().parent.parent
IMAGE_TOML = REPO / "images/rootfs/etc/sennet/agent.toml"
UPTIME = re.compile(r"\buptime=(\d+\.\d+)")
RSS = re.compile(r"event=footprint\b.*\brss_kib=(\d+)")
# (marker, console pattern): the end of each phase, in boot order. A phase runs from the
# previous marker that was seen to its own.
MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("kernel", re.compile(r"sennet-initramfs: event=start\b")),
    ("modules", re.compile(r"sennet-initramfs: event=modules_loaded\b")),
    ("root_mount", re.compile(r"sennet-initramfs: event=root_mounted\b")),
    # The boot-time loader (a boot after the first, with the agent's plan): within init.
    ("early_load", re.compile(r"sennet-early-attach: event=early_bpf_loaded\b")),
    ("early_attach", re.compile(r"sennet-early-attach: event=early_counting\b")),
    ("init", re.compile(r"sennet-supervisor: event=agent_start\b")),
    ("agent_start", re.compile(r"event=agent_starting\b")),
    ("imports", re.compile(r"event=datapath_loading\b")),
    ("bpf_load", re.compile(r"event=bpf_loaded\b|event=bpf_adopted\b")),
    ("attach", re.compile(r"event=counting\b|event=agent_ready\b")),
)
PHASES = ("firmware", *(m for m, _ in MARKERS), "ready", "first_heartbeat")
NOTES = {
    "firmware": "QEMU start to the kernel's clock: firmware, kernel load and decompression",
    "kernel": "kernel init and initramfs unpack, to the initramfs's first line",
    "modules": "initramfs insmod of /etc/modules",
    "root_mount": "GPT scan, squashfs mounts",
    "early_load": "rc.boot to the boot-time loader's programs loaded (the verifier)",
    "early_attach": "the boot-time loader's filters on every monitored NIC: counting",
    "init": "switch_root, busybox init, rc.boot (state, network), supervisor",
    "agent_start": "python3 start and the CLI's own imports, config",
    "imports": "run loop imports, state dir, identity",
    "bpf_load": "libbpf open/load/pin of the BPF objects, or adopting the boot-time load",
    "attach": "TC filters on every monitored NIC: counting",
    "ready": "counting to agent_ready (privilege drop, threads, local /metrics)",
    "first_heartbeat": "agent_ready to the first heartbeat committed by the control plane",
    "to_counting": "QEMU start to counting on every monitored NIC (boot-time loader or agent)",
    "to_ready": "QEMU start to agent_ready",
    "to_heartbeat": "QEMU start to the first heartbeat committed",
}


class Failed(Exception):
    """A boot did not get to its first heartbeat: no figure of the run is valid."""


@dataclass(frozen=True)
class Line:
    at: float  # host seconds since QEMU started
    text: str


@dataclass(frozen=True)
class Boot:
    """Seconds per phase of one boot, and the agent's RSS once idle (None if not printed)."""

    phases: dict[str, float]
    rss_kib: int | None


def provisioning(cp: ControlPlane, interval_s: int) -> str:
    """The image's own agent.toml with the control plane, token and interval set."""
    text = IMAGE_TOML.read_text()
    text = re.sub(r'(?m)^control_plane = ""$', f'control_plane = "10.0.2.2:{cp.grpc_port}"', text)
    text = re.sub(r"(?m)^interval_s = \d+$", f"interval_s = {interval_s}", text)
    return text + f'bootstrap_token = "{cp.token}"\n'


def _disk(image: Path, work: Path, toml: str, network_env: str = "") -> Path:
    raw = work / "disk.raw"
    shutil.copyfile(image / "appliance.raw", raw)
    (work / "agent.toml").write_text(toml)
    (work / "network.env").write_text(network_env)
    for name in ("agent.toml", "network.env") if network_env else ("agent.toml",):
        subprocess.run(
            ["mcopy", "-o", "-i", f"{raw}@@{MIB}", str(work / name), f"::/sennet/{name}"],
            env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
            check=True,
        )
    overlay = work / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(raw), str(overlay)],
        check=True,
    )
    return overlay


def _first_heartbeat(cp: ControlPlane, since_epoch: float) -> float | None:
    rows = cp.query("SELECT MIN(received_at) FROM heartbeats WHERE received_at >= ?", since_epoch)
    value = rows[0][0] if rows else None
    return float(value) if value is not None else None


@dataclass(frozen=True)
class Disk:
    """One appliance disk and the firmware's variables: fresh for every boot of `--kind
    first`; with `--kind next`, one per image and mode, kept across its boots."""

    image: Path
    path: Path
    vars_file: Path


@dataclass(frozen=True)
class Variant:
    """What one column of the table boots: an image directory, and ESP settings."""

    image: Path
    network_env: str = ""  # sennet/network.env on the ESP (e.g. SENNET_EARLY_ATTACH=off)


def make_disk(variant: Variant, work: Path, mode: str, toml: str) -> Disk:
    vars_file = work / "OVMF_VARS.fd"
    if mode == "uefi":
        shutil.copyfile(qemu.OVMF_VARS, vars_file)
    return Disk(variant.image, _disk(variant.image, work, toml, variant.network_env), vars_file)


def run_boot(disk: Disk, mode: str, cp: ControlPlane, args: argparse.Namespace) -> list[Line]:
    """One boot until the first heartbeat is committed and the agent printed its footprint;
    then the plug is pulled (what a power cut does: the next boot starts from there)."""
    how: qemu.DirectBoot | qemu.UefiBoot
    if mode == "uefi":
        how = qemu.UefiBoot(vars_file=disk.vars_file)
    else:
        how = qemu.direct_boot(disk.image, (disk.image / "cmdline").read_text().strip())
    argv = qemu.qemu_argv(
        accel=args.accel,
        disk=disk.path,
        boot=how,
        memory_mib=512,
        smp=2,
        monitored_netdev="user,restrict=on",
    )
    epoch0, start = time.time(), time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        return _collect(proc, cp, epoch0, start, args.timeout)
    finally:
        proc.kill()
        proc.wait()


def _collect(
    proc: subprocess.Popen[bytes], cp: ControlPlane, epoch0: float, start: float, timeout: float
) -> list[Line]:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    lines: list[Line] = []
    pending = ""
    acked: float | None = None
    next_poll = 0.0
    while time.monotonic() - start < timeout:
        ready, _, _ = select.select([fd], [], [], 0.1)
        now = time.monotonic() - start
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk.decode(errors="replace")
            *done, pending = pending.split("\n")
            lines += [Line(now, t.rstrip("\r")) for t in done]
        if acked is None and now >= next_poll:
            next_poll = now + 0.25
            at = _first_heartbeat(cp, epoch0)
            if at is not None:
                acked = at - epoch0
                lines.append(Line(acked, "bench: event=first_heartbeat"))
        if acked is not None and any(RSS.search(x.text) for x in lines):
            return lines
        if acked is not None and now > acked + 30:  # an image that prints no footprint
            return lines
    tail = "\n".join(x.text for x in lines[-30:])
    raise Failed(f"no first heartbeat within {timeout:.0f} s; console tail:\n{tail}")


def phases(lines: list[Line]) -> Boot:
    """Phase lengths from the stamped console (see the module docstring for the clocks)."""
    offsets = [x.at - float(m.group(1)) for x in lines if (m := UPTIME.search(x.text))]
    if not offsets:
        raise Failed("no console line carried uptime=")
    kernel_t0 = min(offsets)  # host seconds at the guest's t=0

    def guest_time(x: Line) -> float:
        m = UPTIME.search(x.text)
        return float(m.group(1)) if m else x.at - kernel_t0

    seen: dict[str, float] = {}
    for name, pattern in (*MARKERS, ("ready", re.compile(r"event=agent_ready\b"))):
        hit = next((x for x in lines if pattern.search(x.text)), None)
        if hit is not None:
            seen[name] = guest_time(hit)
    hb = next((x for x in lines if x.text == "bench: event=first_heartbeat"), None)
    if hb is None or "ready" not in seen:
        raise Failed("the boot reached neither agent_ready nor a first heartbeat")
    seen["first_heartbeat"] = hb.at - kernel_t0
    out = {"firmware": kernel_t0}
    last = 0.0
    for name in PHASES[1:]:
        if name in seen:
            out[name] = max(0.0, seen[name] - last)
            last = seen[name]
    out["to_counting"] = kernel_t0 + seen.get("early_attach", seen["attach"])
    out["to_ready"] = kernel_t0 + seen["ready"]
    out["to_heartbeat"] = kernel_t0 + seen["first_heartbeat"]
    rss = next((int(m.group(1)) for x in lines if (m := RSS.search(x.text))), None)
    return Boot(out, rss)


def figures_for(mode: str, boots: list[Boot], base: list[Boot] | None) -> list[Figure]:
    """Medians per phase; with a baseline, its median on the row before, and as the
    image figure's `baseline` (same run, same machine)."""
    figs: list[Figure] = []
    for key in (*PHASES, "to_counting", "to_ready", "to_heartbeat"):
        values = [b.phases[key] for b in boots if key in b.phases]
        old = [b.phases[key] for b in base or [] if key in b.phases]
        ref = None
        if old:
            ref = Figure(f"boot.{mode}.baseline.{key}", round(median(old), 2), "s", "baseline")
            figs.append(ref)
        if values:
            figs.append(
                Figure(f"boot.{mode}.{key}", round(median(values), 2), "s", NOTES[key], ref)
            )
    rss = [b.rss_kib for b in boots if b.rss_kib is not None]
    if rss:
        figs.append(
            Figure(
                f"boot.{mode}.agent_rss",
                round(median(rss) / 1024, 1),
                "MiB",
                "agent VmRSS after its second heartbeat, gRPC sink loaded",
            )
        )
    return figs


def run_all(
    images: dict[str, Variant], modes: list[str], cp: ControlPlane, args: argparse.Namespace
) -> dict[tuple[str, str], list[Boot]]:
    """Every boot, the images interleaved within each round so drifts hit both."""
    results: dict[tuple[str, str], list[Boot]] = {}
    toml = provisioning(cp, args.interval)
    with contextlib.ExitStack() as stack:

        def fresh(image: Variant, mode: str) -> Disk:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sennet-bb-")))
            return make_disk(image, work, mode, toml)

        for mode in modes:
            kept: dict[str, Disk] = {}
            if args.kind == "next":  # provisioned, enrolled, the agent's plan written
                for label, image in images.items():
                    print(f"boot {mode}-{label or 'image'}-provisioning", file=sys.stderr)
                    kept[label] = fresh(image, mode)
                    run_boot(kept[label], mode, cp, args)
            for i in range(args.boots):
                for label, image in images.items():
                    name = f"{mode}-{label or 'image'}-{i + 1}"
                    print(f"boot {name}", file=sys.stderr)
                    lines = run_boot(kept.get(label) or fresh(image, mode), mode, cp, args)
                    if args.consoles is not None:
                        args.consoles.mkdir(parents=True, exist_ok=True)
                        (args.consoles / f"{name}.log").write_text(
                            "".join(f"{x.at:9.3f} {x.text}\n" for x in lines)
                        )
                    boot = phases(lines)
                    results.setdefault((mode, label), []).append(boot)
                    print(f"  {boot.phases} rss_kib={boot.rss_kib}", file=sys.stderr)
    return results


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--image", type=Path, default=REPO / "bazel-bin/images")
    against = p.add_mutually_exclusive_group()
    against.add_argument("--baseline", type=Path, help="an older image's directory, interleaved")
    against.add_argument(
        "--baseline-early-attach-off",
        action="store_true",
        help="the baseline is the same image with SENNET_EARLY_ATTACH=off on its ESP: the "
        "agent loads and attaches at its own start (the path before the boot-time loader)",
    )
    p.add_argument("--mode", action="append", choices=("direct", "uefi"), help="default: both")
    p.add_argument("--boots", type=int, default=3, help="boots per mode and image (median)")
    p.add_argument(
        "--kind",
        choices=("first", "next"),
        default="next",
        help="first: every boot from a fresh disk (formatting, provisioning, enrolment); "
        "next (default): the boots after an unmeasured first one on the same disk, each "
        "ended by pulling the plug, as an edge box boots after a power cut",
    )
    p.add_argument("--accel", choices=("tcg", "kvm"), default="tcg")
    p.add_argument("--interval", type=int, default=2, help="the agent's interval_s")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per boot")
    p.add_argument("--json", action="store_true", help="one JSON object per figure")
    p.add_argument("--consoles", type=Path, help="keep each boot's stamped console here")
    args = p.parse_args(argv)
    images = {"": Variant(args.image)}
    if args.baseline:
        images["baseline"] = Variant(args.baseline)
    elif args.baseline_early_attach_off:
        images["baseline"] = Variant(args.image, "SENNET_EARLY_ATTACH=off\n")
    for variant in images.values():
        if not (variant.image / "appliance.raw").is_file():
            print(f"boot.py: error: no appliance.raw in {variant.image}", file=sys.stderr)
            return 2
    if os.geteuid() != 0:
        print("boot.py: error: needs root (the control plane's database, QEMU)", file=sys.stderr)
        return 2
    modes = args.mode or ["direct", "uefi"]
    # SIGTERM unwinds like Ctrl-C: the finally blocks stop QEMU and the control plane.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="sennet-bootbench-cp-") as tmp:
        cp = ControlPlane(Path(tmp) / "cp.db", Path(tmp), name="cp")
        cp.create_token("boot-bench")
        cp.start()
        try:
            results = run_all(images, modes, cp, args)
        except Failed as exc:
            print(f"boot.py: harness error: {exc}", file=sys.stderr)
            return 3
        finally:
            cp.stop()
    figs: list[Figure] = []
    for mode in modes:
        base = results.get((mode, "baseline"))
        figs += figures_for(mode, results[(mode, "")], base)
    print(report(figs, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

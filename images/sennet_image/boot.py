"""Boot the built image under QEMU: direct kernel boot (fast) or UEFI via OVMF (as flashed).

KVM is used only when a short probe proves it boots a kernel here (on some
hosts /dev/kvm exists but the CPU lacks VT-x and QEMU hangs); otherwise TCG.
The image file is never written: each boot runs on a qcow2 overlay (kept with
--state to survive a reboot). Provisioning without rebuilding: in direct mode
the kernel command line (sennet.control_plane=..., sennet.bootstrap_token=...);
in either mode --provision FILE is written to the ESP as sennet/agent.toml.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sennet.common.errors import EXIT_FAILED, EXIT_OK

from sennet_image import qemu
from sennet_image.disk import MIB
from sennet_image.proc import die, log, run

READY = re.compile(r"event=agent_ready\b")
ATTACHED = re.compile(r"event=attached\b.*ifname=(\S+)")
DEFAULT_IMAGE = Path(__file__).resolve().parent.parent.parent / "build" / "image"


@dataclass(frozen=True)
class BootResult:
    """What the console showed: seconds from QEMU start to agent_ready, attached interfaces."""

    ready_s: float | None
    attached: tuple[str, ...]
    console: str


def prepare_disk(
    image_dir: Path, variant: str, workdir: Path, provision: Path | None, state: Path | None
) -> Path:
    """A qcow2 overlay over the image (or a provisioned copy), so the image stays untouched."""
    name = "appliance-test" if variant == "test" else "appliance"
    base = image_dir / f"{name}.qcow2"
    if not base.is_file():
        die(
            f"no image at {base}", hint="build it: images/build (or bazel build //images:appliance)"
        )
    if state is not None and state.is_file():
        return state
    if provision is not None:
        raw = workdir / f"{name}.raw"
        shutil.copyfile(image_dir / f"{name}.raw", raw)
        run(
            ["mcopy", "-o", "-i", f"{raw}@@{MIB}", provision, "::/sennet/agent.toml"],
            env={"MTOOLS_SKIP_CHECK": "1"},
        )
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, workdir / "provisioned.qcow2"])
        raw.unlink()
        base = workdir / "provisioned.qcow2"
    overlay = state or workdir / "overlay.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base.resolve(), overlay])
    return overlay


def boot(args: argparse.Namespace) -> BootResult:
    """Boot once; with --until-ready stop when the agent reports ready (or on timeout)."""
    image_dir: Path = args.image.resolve()
    accel = qemu.accelerator(image_dir / "vmlinuz", args.accel)
    log("boot", mode=args.mode, variant=args.variant, accel=accel, image=image_dir)
    extra = list(args.append)
    if args.control_plane:
        extra.append(f"sennet.control_plane={args.control_plane}")
    if args.bootstrap_token:
        extra.append(f"sennet.bootstrap_token={args.bootstrap_token}")
    if args.ssh_key:
        extra.append(
            "sennet.ssh_key=" + args.ssh_key.read_text().split("\n")[0].strip().replace(" ", ":")
        )
    if args.secure_boot and args.mode != "uefi":
        die("--secure-boot needs --mode uefi", hint="the firmware checks the signatures")
    if extra and args.mode == "uefi":
        die(
            "kernel command-line provisioning needs --mode direct",
            hint="the UKI's command line is fixed; use --provision FILE for UEFI boots",
        )
    with tempfile.TemporaryDirectory(prefix="sennet-boot-") as tmp:
        work = Path(tmp)
        disk = prepare_disk(image_dir, args.variant, work, args.provision, args.state)
        how: qemu.DirectBoot | qemu.UefiBoot
        if args.mode == "uefi":
            how = qemu.UefiBoot(vars_file=work / "OVMF_VARS.fd", secure_boot=args.secure_boot)
            shutil.copyfile(qemu.vars_template(args.secure_boot), how.vars_file)
        else:
            cmdline = (image_dir / "cmdline").read_text().strip()
            how = qemu.direct_boot(
                image_dir, " ".join([cmdline, *extra]), test=args.variant == "test"
            )
        argv = qemu.qemu_argv(
            accel=accel,
            disk=disk,
            boot=how,
            memory_mib=args.memory,
            smp=args.smp,
            monitored_netdev=args.monitor_netdev,
            ssh_port=args.ssh_port,
            cpu=args.cpu,
        )
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if args.until_ready else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        chunks: list[str] = []
        try:
            pattern = READY if args.until_ready else re.compile(r"(?!x)x")
            out = qemu.read_until(proc, pattern, args.timeout, echo=not args.quiet, sink=chunks)
            ready_s = time.monotonic() - start if READY.search(out) else None
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    console = "".join(chunks)
    attached = tuple(dict.fromkeys(m.group(1) for m in ATTACHED.finditer(console)))
    return BootResult(ready_s, attached, console)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The boot command's flags (`sennet_image boot`)."""
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="directory of artefacts")
    p.add_argument("--mode", choices=("direct", "uefi"), default="direct")
    p.add_argument(
        "--secure-boot",
        action="store_true",
        help="UEFI with Secure Boot enforced (OVMF secboot firmware, snakeoil keys enrolled)",
    )
    p.add_argument("--variant", choices=("production", "test"), default="production")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    p.add_argument("--control-plane", help="host:port (direct mode: kernel command line)")
    p.add_argument("--bootstrap-token", help="enrolment token (direct mode: kernel command line)")
    p.add_argument("--provision", type=Path, help="agent.toml to place on the ESP (any mode)")
    p.add_argument("--ssh-key", type=Path, help="public key for root (test variant)")
    p.add_argument(
        "--ssh-port", type=int, help="forward this host port to the guest's SSH (test variant)"
    )
    p.add_argument("--append", action="append", default=[], help="extra kernel arguments")
    p.add_argument(
        "--monitor-netdev",
        default="user,restrict=on",
        help="QEMU -netdev backend for the monitored NIC, without id (the command line\n"
        "names it mon), e.g. tap,fd=3",
    )
    p.add_argument("--state", type=Path, help="keep the disk overlay here across boots")
    p.add_argument("--memory", type=int, default=512, help="guest RAM in MiB")
    p.add_argument(
        "--cpu",
        help=f"QEMU CPU model (default: {qemu.KVM_CPU} under KVM; under TCG {qemu.TCG_CPU},\n"
        "x86-64-v2, cheaper to emulate than -cpu max)",
    )
    p.add_argument("--smp", type=int, default=2, help="guest CPUs")
    p.add_argument("--until-ready", action="store_true", help="exit once the agent is ready")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before giving up")
    p.add_argument("--quiet", action="store_true", help="do not echo the console")


def main(args: argparse.Namespace) -> int:
    """Boot; with --until-ready log boot-to-ready seconds and exit 0 only if it got there."""
    result = boot(args)
    if args.until_ready:
        if result.ready_s is None:
            log("agent_not_ready", timeout_s=f"{args.timeout:.0f}")
            return EXIT_FAILED
        log("agent_ready", seconds=f"{result.ready_s:.2f}", attached=",".join(result.attached))
    return EXIT_OK

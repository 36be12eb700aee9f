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
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sennet_image.disk import MIB
from sennet_image.proc import BuildError, die, log, run

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
READY = re.compile(r"event=agent_ready\b")
ATTACHED = re.compile(r"event=attached\b.*ifname=(\S+)")
DEFAULT_IMAGE = Path(__file__).resolve().parent.parent.parent / "build" / "image"


@dataclass(frozen=True)
class BootResult:
    """What the console showed: seconds from QEMU start to agent_ready, attached interfaces."""

    ready_s: float | None
    attached: tuple[str, ...]
    console: str


def kvm_works(vmlinuz: Path, timeout_s: float = 4.0) -> bool:
    """True if QEMU with KVM prints the kernel banner within `timeout_s` (a real probe)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError:
        return False
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "kvm",
        "-nodefaults",
        "-display",
        "none",
        "-m",
        "256",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        str(vmlinuz),
        "-append",
        "console=ttyS0 panic=-1 earlyprintk=ttyS0",
    ]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out = _read_until(proc, re.compile(r"Linux version"), timeout_s, echo=False)
        return bool(re.search(r"Linux version", out))
    finally:
        proc.kill()
        proc.wait()


def _read_until(
    proc: subprocess.Popen[bytes],
    pattern: re.Pattern[str],
    timeout_s: float,
    echo: bool,
    sink: list[str] | None = None,
) -> str:
    """Collect the process's output until `pattern` matches, it exits, or time runs out."""
    assert proc.stdout is not None
    buf = ""
    deadline = time.monotonic() + timeout_s
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
        if not ready:
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        text = chunk.decode(errors="replace")
        if echo:
            sys.stdout.write(text)
            sys.stdout.flush()
        buf += text
        if sink is not None:
            sink.append(text)
        match = pattern.search(buf)
        if match and "\n" in buf[match.end() :]:  # the whole matching line, not half of it
            break
    return buf


def qemu_argv(
    image_dir: Path,
    disk: Path,
    *,
    mode: str,
    accel: str,
    cmdline_extra: list[str],
    mgmt_netdev: str,
    monitor_netdev: str,
    vars_file: Path | None,
    memory_mb: int,
    cpu: str,
    smp: int,
) -> list[str]:
    """The QEMU command line: virtio disk, management NIC (user net, control plane at
    10.0.2.2), monitored NIC (second netdev), serial console on stdio."""
    argv = [
        "qemu-system-x86_64",
        "-accel",
        accel,
        "-m",
        str(memory_mb),
        "-smp",
        str(smp),
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-drive",
        f"file={disk},if=virtio,format=qcow2",
        "-netdev",
        mgmt_netdev,
        "-device",
        "virtio-net-pci,netdev=mgmt,mac=52:54:00:00:00:01",
        "-netdev",
        monitor_netdev,
        "-device",
        "virtio-net-pci,netdev=mon,mac=52:54:00:00:00:02",
    ]
    argv += ["-cpu", cpu]
    if mode == "direct":
        cmdline = (image_dir / "cmdline").read_text().strip()
        argv += [
            "-kernel",
            str(image_dir / "vmlinuz"),
            "-initrd",
            str(image_dir / "initrd.img"),
            "-append",
            " ".join([cmdline, *cmdline_extra]),
        ]
    else:
        assert vars_file is not None
        argv += [
            "-machine",
            "q35",
            "-drive",
            f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,file={vars_file}",
        ]
    return argv


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
    accel = args.accel
    if accel == "auto":
        accel = "kvm" if kvm_works(image_dir / "vmlinuz") else "tcg"
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
    if extra and args.mode == "uefi":
        die(
            "kernel command-line provisioning needs --mode direct",
            hint="the UKI's command line is fixed; use --provision FILE for UEFI boots",
        )
    with tempfile.TemporaryDirectory(prefix="sennet-boot-") as tmp:
        work = Path(tmp)
        disk = prepare_disk(image_dir, args.variant, work, args.provision, args.state)
        vars_file = None
        if args.mode == "uefi":
            vars_file = work / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_file)
        argv = qemu_argv(
            image_dir,
            disk,
            mode=args.mode,
            accel=accel,
            cmdline_extra=extra,
            mgmt_netdev="user,id=mgmt"
            + (f",hostfwd=tcp:127.0.0.1:{args.ssh_port}-:22" if args.ssh_port else ""),
            monitor_netdev=args.monitor_netdev,
            vars_file=vars_file,
            memory_mb=args.memory,
            cpu=args.cpu or ("host" if accel == "kvm" else "Nehalem"),
            smp=args.smp,
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
            out = _read_until(proc, pattern, args.timeout, echo=not args.quiet, sink=chunks)
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


def parser() -> argparse.ArgumentParser:
    """The boot command's flags."""
    p = argparse.ArgumentParser(
        prog="images/boot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="directory of artefacts")
    p.add_argument("--mode", choices=("direct", "uefi"), default="direct")
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
        default="user,id=mon,restrict=on",
        help="QEMU -netdev for the monitored NIC (id=mon), e.g. tap,id=mon,fd=3",
    )
    p.add_argument("--state", type=Path, help="keep the disk overlay here across boots")
    p.add_argument("--memory", type=int, default=512, help="guest RAM in MiB")
    p.add_argument(
        "--cpu",
        help="QEMU CPU model (default: host under KVM; under TCG Nehalem,\n"
        "x86-64-v2 as numpy needs, cheaper to emulate than -cpu max)",
    )
    p.add_argument("--smp", type=int, default=2, help="guest CPUs")
    p.add_argument("--until-ready", action="store_true", help="exit once the agent is ready")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before giving up")
    p.add_argument("--quiet", action="store_true", help="do not echo the console")
    return p


def main(argv: list[str]) -> int:
    """Boot; with --until-ready print boot-to-ready seconds and exit 0 only if it got there."""
    args = parser().parse_args(argv)
    try:
        result = boot(args)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.until_ready:
        if result.ready_s is None:
            print(f"error: agent not ready within {args.timeout:.0f} s", file=sys.stderr)
            return 1
        log("agent_ready", seconds=f"{result.ready_s:.2f}", attached=",".join(result.attached))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

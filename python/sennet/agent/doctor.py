"""`sennet-agent doctor`: does this machine give the agent what it needs? Each check, a fix.

The first thing a field engineer runs. Every check asks the kernel itself rather
than reading a version number: a ring-buffer map is created, a program is
loaded, a clsact qdisc is added (on the loopback device of a private network
namespace made for the purpose, so no interface of the machine is touched) and
each is released at once. Each check gives PASS or FAIL, one line of detail,
and on failure one line saying what to do. Output: text (default), `--json`,
or `--metrics` (Prometheus text, `sennet_agent_doctor_check{check} 0|1`, for a
node exporter's textfile directory); the exit status is 1 when any check fails.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import sennet
from sennet.agent.datapath.bpffs import is_bpffs
from sennet.agent.exposition import GaugeFamily, render

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
BPF_ROOT = Path("/sys/fs/bpf")
# Earliest plausible wall-clock time: this code did not exist before it (2026-11-01 UTC).
# The build's own date (the package files' mtime, SOURCE_DATE_EPOCH in the image) may be later.
EPOCH_FLOOR = 1_793_491_200.0
LATEST_PLAUSIBLE = 4_102_444_800.0  # 2100-01-01: past it the clock is wrong, not the year
CAP_NAMES = {12: "CAP_NET_ADMIN", 21: "CAP_SYS_ADMIN", 38: "CAP_PERFMON", 39: "CAP_BPF"}
_BPF_MAP_TYPE_RINGBUF = 27
_BPF_PROG_TYPE_SCHED_CLS = 3
_CLONE_NEWNET = 0x40000000
# r0 = 0 (TC_ACT_OK); exit
_PASS_PROGRAM = bytes.fromhex("b7000000000000009500000000000000")


@dataclass(frozen=True)
class Result:
    check: str
    ok: bool
    detail: str
    fix: str = ""  # set when not ok


def _pass(check: str, detail: str) -> Result:
    return Result(check, True, detail)


def _fail(check: str, detail: str, fix: str) -> Result:
    return Result(check, False, detail, fix)


def check_btf(path: Path = BTF_PATH) -> Result:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            magic = f.read(2)
    except OSError as exc:
        return _fail(
            "kernel_btf",
            f"{path}: {exc.strerror}",
            "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (the appliance's Debian 6.1 has it)",
        )
    if magic not in (b"\x9f\xeb", b"\xeb\x9f"):
        return _fail("kernel_btf", f"{path} is not BTF", "boot a kernel with working BTF")
    return _pass("kernel_btf", f"{path} ({size} bytes)")


def check_bpffs(pin_dir: Path) -> Result:
    where = pin_dir if pin_dir.exists() else BPF_ROOT
    if is_bpffs(where):
        return _pass("bpffs", f"{where} is a bpf filesystem")
    return _fail(
        "bpffs",
        f"{where} is not a bpf filesystem (maps cannot be pinned there)",
        f"mount -t bpf bpf {BPF_ROOT} (the appliance's rc.boot does it at boot)",
    )


def _libbpf() -> ctypes.CDLL:
    from sennet.agent.datapath.libbpf import libbpf

    lib = libbpf().lib
    lib.bpf_map_create.restype = ctypes.c_int
    lib.bpf_map_create.argtypes = [
        ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
        ctypes.c_void_p,
    ]  # fmt: skip
    lib.bpf_prog_load.restype = ctypes.c_int
    lib.bpf_prog_load.argtypes = [
        ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
        ctypes.c_void_p,
    ]  # fmt: skip
    return lib


def _errno_text(rc: int) -> str:
    err = -rc if rc < 0 else ctypes.get_errno()
    return f"{os.strerror(err)} (errno {err})"


def check_ringbuf() -> Result:
    try:
        lib = _libbpf()
    except Exception as exc:  # no libbpf at all is a failed check, not a crash
        return _fail("bpf_ringbuf", f"libbpf: {exc}", "install libbpf1")
    fd = lib.bpf_map_create(_BPF_MAP_TYPE_RINGBUF, b"sennet_doctor", 0, 0, 1 << 16, None)
    if fd < 0:
        return _fail(
            "bpf_ringbuf",
            f"creating a 64 KiB ring buffer map failed: {_errno_text(fd)}",
            "run as root (or with CAP_BPF) on a kernel >= 5.8 with CONFIG_BPF_SYSCALL",
        )
    os.close(fd)
    return _pass("bpf_ringbuf", "a 64 KiB ring buffer map was created and closed")


def check_program() -> Result:
    try:
        lib = _libbpf()
    except Exception as exc:
        return _fail("bpf_program", f"libbpf: {exc}", "install libbpf1")
    insns = ctypes.create_string_buffer(_PASS_PROGRAM, len(_PASS_PROGRAM))
    fd = lib.bpf_prog_load(
        _BPF_PROG_TYPE_SCHED_CLS, b"sennet_doctor", b"GPL", insns.raw, len(_PASS_PROGRAM) // 8, None
    )
    if fd < 0:
        return _fail(
            "bpf_program",
            f"loading a two-instruction TC program failed: {_errno_text(fd)}",
            "run as root (or with CAP_BPF and CAP_NET_ADMIN); under Secure Boot lockdown "
            "unsigned programs still load (no kprobes here), so check dmesg for bpf refusals",
        )
    os.close(fd)
    return _pass("bpf_program", "a TC (sched_cls) program was loaded and closed")


def _clsact_in_private_netns() -> str | None:
    """In a forked child: new network namespace, clsact on its lo; None or the error text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into the caller's code
        os.close(read_end)
        message = b""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(_CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            from sennet.agent.datapath import netlink_attach

            lo = socket.if_nametoindex("lo")
            netlink_attach.tc_hook_create(lo)
            netlink_attach.tc_hook_destroy(lo)
        except Exception as exc:
            message = str(exc).encode() or type(exc).__name__.encode()
        os.write(write_end, message)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        message = f.read()
    os.waitpid(pid, 0)
    return message.decode(errors="replace") or None


def check_clsact() -> Result:
    error = _clsact_in_private_netns()
    if error is not None:
        return _fail(
            "clsact",
            f"adding a clsact qdisc failed: {error}",
            "run as root (CAP_NET_ADMIN, CAP_SYS_ADMIN); the kernel needs sch_ingress "
            "(CONFIG_NET_SCH_INGRESS) and cls_bpf (modprobe sch_ingress cls_bpf)",
        )
    return _pass("clsact", "a clsact qdisc was added and removed (lo of a private namespace)")


def effective_caps(status: Path = Path("/proc/self/status")) -> int:
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_capabilities(caps: int | None = None) -> Result:
    caps = effective_caps() if caps is None else caps

    def has(bit: int) -> bool:
        return bool(caps >> bit & 1)

    missing = [CAP_NAMES[12]] if not has(12) else []  # TC filters and qdiscs
    if not (has(39) or has(21)):  # maps and programs
        missing.append("CAP_BPF (or CAP_SYS_ADMIN)")
    if missing:
        return _fail(
            "capabilities",
            f"missing {', '.join(missing)} (effective set {caps:#x})",
            "start the agent as root; it keeps only CAP_NET_ADMIN after attaching (run_as)",
        )
    held = ", ".join(name for bit, name in sorted(CAP_NAMES.items()) if has(bit))
    return _pass("capabilities", f"effective: {held}")


def build_floor() -> float:
    """The earliest the clock may read: our code's own date (the build's, in the image)."""
    own = Path(sennet.__file__)
    try:
        mtime = own.stat().st_mtime
    except OSError:
        mtime = 0.0
    return max(EPOCH_FLOOR, mtime)


def check_clock(
    realtime: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    floor: float | None = None,
) -> Result:
    floor = build_floor() if floor is None else floor
    now = realtime()
    fix = "set the clock (NTP, or the RTC: hwclock --systohc after setting it); TLS needs it"
    if now < floor:
        return _fail(
            "clock",
            f"CLOCK_REALTIME reads {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}, "
            f"before this build ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(floor))})",
            fix,
        )
    if now > LATEST_PLAUSIBLE:
        return _fail("clock", f"CLOCK_REALTIME reads {now:.0f}, after 2100", fix)
    first = monotonic()
    time.sleep(0.01)
    second = monotonic()
    if not second > first:
        return _fail(
            "clock",
            f"CLOCK_MONOTONIC did not move in 10 ms ({first} then {second})",
            "the kernel's clocksource is broken: check dmesg for clocksource messages",
        )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return _pass("clock", f"realtime {stamp} (not before the build); monotonic moves")


def check_space(state_dir: Path, min_free_bytes: int) -> Result:
    where = state_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    mib = 1 << 20
    if free < min_free_bytes:
        return _fail(
            "state_space",
            f"{where}: {free / mib:.1f} MiB free, at least {min_free_bytes / mib:.0f} MiB wanted",
            f"free space on the filesystem of {where} (old update bundles: "
            f"{state_dir}/agent/updates/), or grow the state partition",
        )
    return _pass("state_space", f"{where}: {free / mib:.0f} MiB free")


def run_checks(pin_dir: Path, state_dir: Path, min_free_bytes: int) -> list[Result]:
    return [
        check_btf(),
        check_bpffs(pin_dir),
        check_ringbuf(),
        check_program(),
        check_clsact(),
        check_capabilities(),
        check_clock(),
        check_space(state_dir, min_free_bytes),
    ]


def as_text(results: list[Result]) -> str:
    width = max(len(r.check) for r in results)
    lines = []
    for r in results:
        lines.append(f"{'PASS' if r.ok else 'FAIL'}  {r.check:{width}}  {r.detail}")
        if not r.ok:
            lines.append(f"      {'':{width}}  fix: {r.fix}")
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines) + "\n"


def as_json(results: list[Result]) -> str:
    doc = {"ok": all(r.ok for r in results), "checks": [asdict(r) for r in results]}
    return json.dumps(doc, indent=1) + "\n"


def as_metrics(results: list[Result]) -> str:
    family = GaugeFamily(
        "sennet_agent_doctor_check",
        "1 if the agent's prerequisite passed `sennet-agent doctor`, 0 if it failed.",
        labels=["check"],
    )
    for r in results:
        family.add_metric([r.check], 1 if r.ok else 0)
    return render([family]).decode()

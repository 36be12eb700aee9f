"""`sennet-agent doctor`: each check passes on this host and fails for real when broken.

Failures are made real where the kernel allows it without disturbing the machine:
a state dir on a 1 MiB tmpfs, /sys/fs/bpf covered by a tmpfs in a private mount
namespace, capabilities removed from the bounding set by setpriv. The wall clock
cannot be set back on a shared host (CLOCK_REALTIME has no namespace), so the clock
check is also run with an injected clock; that is the one stand-in here.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from sennet.agent import doctor
from sennet.testing.process import PYTHON

DOCTOR = [PYTHON, "-m", "sennet.agent.cli", "doctor"]
CHECKS = [
    "kernel_btf",
    "bpffs",
    "bpf_ringbuf",
    "bpf_program",
    "clsact",
    "capabilities",
    "clock",
    "state_space",
]


def run(
    argv: list[str], *flags: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *argv, *flags],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def by_check(stdout: str) -> dict[str, bool]:
    doc = json.loads(stdout)
    return {c["check"]: c["ok"] for c in doc["checks"]}


def test_every_check_passes_as_root_here_in_text_json_and_metrics(
    root: None, tmp_path: Path
) -> None:
    state = ["--state-dir", str(tmp_path)]
    text = run(DOCTOR, *state)
    assert text.returncode == 0, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [["PASS", c] for c in CHECKS]
    assert lines[-1] == "8 passed, 0 failed"
    as_json = run(DOCTOR, *state, "--json")
    assert (as_json.returncode, json.loads(as_json.stdout)["ok"]) == (0, True)
    assert by_check(as_json.stdout) == dict.fromkeys(CHECKS, True)
    metrics = run(DOCTOR, *state, "--metrics")
    assert metrics.returncode == 0
    for check in CHECKS:
        assert f'sennet_agent_doctor_check{{check="{check}"}} 1.0' in metrics.stdout
    promtool = subprocess.run(
        ["promtool", "check", "metrics"], input=metrics.stdout, capture_output=True, text=True
    )
    assert (promtool.returncode, promtool.stdout, promtool.stderr) == (0, "", "")


def test_a_full_state_filesystem_fails_state_space_with_a_fix(root: None, tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        result = run(DOCTOR, "--state-dir", str(mnt), "--min-free-mib", "2")
        assert result.returncode == 1
        line = next(x for x in result.stdout.splitlines() if "state_space" in x)
        assert line.startswith("FAIL  state_space")
        assert f"{mnt}: 1.0 MiB free, at least 2 MiB wanted" in line
        assert "fix: free space on the filesystem of" in result.stdout
        assert result.stdout.splitlines()[-1] == "7 passed, 1 failed"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_bpffs_not_mounted_fails_bpffs(root: None, tmp_path: Path) -> None:
    # a private mount namespace where /sys/fs/bpf is covered by a tmpfs: the host is untouched
    script = 'mount -t tmpfs none /sys/fs/bpf && exec "$@"'
    result = run(
        DOCTOR,
        "--json",
        "--state-dir",
        str(tmp_path),
        prefix=("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"),
    )
    assert result.returncode == 1, result.stderr
    checks = json.loads(result.stdout)["checks"]
    bpffs = next(c for c in checks if c["check"] == "bpffs")
    assert bpffs == {
        "check": "bpffs",
        "ok": False,
        "detail": "/sys/fs/bpf is not a bpf filesystem (maps cannot be pinned there)",
        "fix": "mount -t bpf bpf /sys/fs/bpf (the appliance's rc.boot does it at boot)",
    }
    assert [c["check"] for c in checks if not c["ok"]] == ["bpffs"]


def test_without_bpf_and_admin_capabilities_the_kernel_refuses_and_doctor_says_so(
    root: None, tmp_path: Path
) -> None:
    drop = ("setpriv", "--bounding-set", "-bpf,-sys_admin,-net_admin,-perfmon", "--")
    result = run(DOCTOR, "--json", "--state-dir", str(tmp_path), prefix=drop)
    assert result.returncode == 1, result.stderr
    ok = by_check(result.stdout)
    assert ok == {
        "kernel_btf": True,
        "bpffs": True,
        "bpf_ringbuf": False,
        "bpf_program": False,
        "clsact": False,
        "capabilities": False,
        "clock": True,
        "state_space": True,
    }
    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["capabilities"]["detail"].startswith(
        "missing CAP_NET_ADMIN, CAP_BPF (or CAP_SYS_ADMIN)"
    )
    assert "Operation not permitted (errno 1)" in checks["bpf_ringbuf"]["detail"]
    assert "Operation not permitted" in checks["clsact"]["detail"]
    assert all(checks[c]["fix"] for c in ("bpf_ringbuf", "bpf_program", "clsact", "capabilities"))


def test_the_clock_check_refuses_a_time_before_the_build_and_a_stopped_monotonic_clock() -> None:
    floor = doctor.build_floor()
    assert floor >= doctor.EPOCH_FLOOR
    early = doctor.check_clock(realtime=lambda: floor - 86400, floor=floor)
    assert not early.ok and "before this build" in early.detail
    late = doctor.check_clock(realtime=lambda: 5e9, floor=floor)
    assert not late.ok and "after 2100" in late.detail
    stuck = doctor.check_clock(monotonic=lambda: 42.0, floor=floor)
    assert not stuck.ok and "CLOCK_MONOTONIC did not move" in stuck.detail
    assert doctor.check_clock(floor=floor).ok
    assert time.time() >= floor  # this host's own clock is sane, as the first test shows


@pytest.mark.parametrize("caps", [0, 1 << 12, 1 << 39])
def test_capabilities_name_exactly_what_is_missing(caps: int) -> None:
    result = doctor.check_capabilities(caps)
    missing = []
    if not caps >> 12 & 1:
        missing.append("CAP_NET_ADMIN")
    if not caps >> 39 & 1:
        missing.append("CAP_BPF (or CAP_SYS_ADMIN)")
    assert result.detail == f"missing {', '.join(missing)} (effective set {caps:#x})"

"""`python -m sennet_image`: one entry, one exit-code rule (Sennet's run_main)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sennet_image import cli

COMMANDS = ("build", "boot", "repro", "lock-update", "bundle", "flash", "step")


def test_every_subcommand_is_listed_and_explains_itself(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = capsys.readouterr().out
    for command in COMMANDS:
        assert command in top
        with pytest.raises(SystemExit) as done:
            cli.main([command, "--help"])
        assert done.value.code == 0
        assert len(capsys.readouterr().out.splitlines()) > 3


def test_an_operator_error_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "sennet_image", "boot", "--accel", "tcg", "--image", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("sennet_image:")]
    assert errors == [f"sennet_image: error: no image at {tmp_path}/appliance.qcow2"]
    assert "Traceback" not in res.stderr


def _step(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sennet_image", "step", *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_successful_step_writes_nothing_to_stderr(tmp_path: Path) -> None:
    (tmp_path / "debian.lock.json").write_text('{"packages": []}')
    (tmp_path / "wheels.lock.json").write_text('{"wheels": []}')
    (tmp_path / "x.bpf.o").write_bytes(b"bpf")
    (tmp_path / "cmdline").write_text("quiet\n")
    res = _step(
        "manifest", "--out", tmp_path / "manifest.json",
        "--debian-lock", tmp_path / "debian.lock.json",
        "--wheels-lock", tmp_path / "wheels.lock.json",
        "--bpf", tmp_path / "x.bpf.o", "--artefacts", tmp_path / "cmdline",
    )  # fmt: skip
    assert (res.returncode, res.stderr) == (0, "")
    assert (
        "x.bpf.o" in json.loads((tmp_path / "manifest.json").read_text())["sources"]["bpf_objects"]
    )


def test_a_failing_step_shows_its_held_back_log_then_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.deb"
    layers: list[str | Path] = []
    for name in ("root", "agent"):
        (tmp_path / f"{name}.squashfs").write_bytes(name.encode())
        layers += [f"--{name}", tmp_path / f"{name}.squashfs"]
    for name in ("root", "agent"):
        (tmp_path / f"{name}.roothash").write_text("ab" * 32 + "\n")
        layers += [f"--{name}-hash", tmp_path / f"{name}.roothash"]
    res = _step(
        "boot-files", "--kernel-deb", missing, "--busybox-deb", missing, "--outdir", tmp_path,
        "--lib-debs", missing, *layers,
    )  # fmt: skip
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert lines[0] == "event=step_start step=initramfs"
    assert lines[1].startswith(f"sennet_image: error: `dpkg-deb --fsys-tarfile {missing}` failed")

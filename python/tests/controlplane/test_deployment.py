"""The shipped deployment runs the control plane without root, and it works that way.

Two checks: systemd itself reads the shipped unit without a single warning (a
misspelt hardening key is silently ignored by systemd, so a warning is a
failure here), and the real control plane, started as `nobody` with every
capability dropped, serves, enrols and stores a heartbeat.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sennet.testing.controlplane import ControlPlane, create_bootstrap_token, heartbeat_request

REPO = Path(__file__).resolve().parents[3]
UNIT = REPO / "deploy/systemd/sennet-controlplane.service"
NOBODY = 65534
UNPRIVILEGED = [
    "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
    "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
]  # fmt: skip


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_the_shipped_unit_runs_as_a_dynamic_user_with_no_capabilities() -> None:
    service = unit()["Service"]
    assert service["DynamicUser"] == "yes"
    assert service["User"] == "sennet-controlplane"
    assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "sennet"
    assert service["Environment"] == "SENNET_CONTROLPLANE_DB=/var/lib/sennet/controlplane.db"


def test_systemd_reads_the_shipped_unit_without_a_warning(tmp_path: Path) -> None:
    local = Path(sys.executable).parent / "sennet-controlplane"  # ExecStart must exist here
    text = UNIT.read_text().replace("/opt/sennet-controlplane/bin/sennet-controlplane", str(local))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stderr) == (0, "")


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory `nobody` owns, outside pytest's root-only temp tree."""
    path = Path(tempfile.mkdtemp(prefix="sennet-nobody-"))
    path.chmod(0o755)
    os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_control_plane_serves_and_stores_as_nobody_with_no_capabilities(
    root: None, nobody_dir: Path
) -> None:
    db = nobody_dir / "cp.db"
    bootstrap = create_bootstrap_token(db)  # the operator's command, then handed over
    for path in nobody_dir.iterdir():
        os.chown(path, NOBODY, NOBODY)
    cp = ControlPlane(db, nobody_dir, run_as=UNPRIVILEGED)
    try:
        cp.start()
        assert cp.proc is not None
        status = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{cp.proc.pid}/status").read_text().splitlines()
        )
        assert status["Uid"].split() == [str(NOBODY)] * 4
        assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
        assert cp.get("/health")[0] == 200
        agent_id, token = cp.register(bootstrap)
        assert cp.heartbeat(token, heartbeat_request(agent_id, rx=(3, 180))) == (
            grpc.StatusCode.OK,
            "",
        )
        assert cp.scalar("SELECT count(*) FROM heartbeats WHERE agent_id = ?", agent_id) == 1
        assert cp.stop() == 0, cp.log()
    finally:
        cp.process.kill()

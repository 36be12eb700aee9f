"""The command as an operator runs it: one refusal line and exit 1, status as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sennet.update.device import Device
from tests.update.bundles import Images, entry_names, make_bundle
from tests.update.conftest import Keys


def cli(dev: Device, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "agent.toml"
    conf.write_text('update_min_version = "0.1.0"\n')
    cmd = [sys.executable, "-m", "sennet.update.cli", "--config", str(conf)]
    cmd += [f"--esp={dev.esp}", f"--state-dir={dev.state_dir}", f"--agent-dir={dev.agent_dir}"]
    cmd += [f"--keyring={dev.keyring}", f"--partitions={dev.partitions}"]
    cmd += [f"--image-env={dev.image_env}", f"--compatible={dev.compatible}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def test_refusal_is_one_line_and_exit_1(tmp_path: Path, keys: Keys, device: Device) -> None:
    old = make_bundle(tmp_path / "b.bundle", keys.good, images=Images(version="0.0.9"))
    done = cli(device, tmp_path, "install", str(old))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "sennet-update: refused: reason=downgrade "
        'detail="bundle 0.0.9 is below update_min_version 0.1.0"'
    )
    assert entry_names(device) == ["sennet-a-0.1.0.efi"]


def test_install_then_status_json(tmp_path: Path, keys: Keys, device: Device) -> None:
    done = cli(device, tmp_path, "install", str(make_bundle(tmp_path / "b.bundle", keys.good)))
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout == "sennet-update: installed: entry=sennet-b-0.2.0+2-0.efi (boots on trial)\n"
    )
    status = json.loads(cli(device, tmp_path, "status", "--json").stdout)
    assert status["running"] == {"slot": "a", "version": "0.1.0"}
    assert status["entries"] == ["sennet-a-0.1.0.efi", "sennet-b-0.2.0+2-0.efi"]
    assert (status["booted_slot"], status["active_slot"]) == ("a", "a")


def test_commit_refuses_when_nothing_is_on_trial(tmp_path: Path, device: Device) -> None:
    done = cli(device, tmp_path, "commit")
    assert done.returncode == 2
    assert done.stderr == (
        "sennet-update: error: slot a (0.1.0) is not on trial: nothing to decide\n"
    )

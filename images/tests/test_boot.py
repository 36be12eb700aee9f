"""Boot the built image under QEMU and check the agent attached (integration: ~1 min each).

Uses the artefacts in $SENNET_IMAGE_DIR, else build/image (images/build), else
bazel-bin/images. TCG unless the KVM probe succeeds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sennet_image import boot, cli

REPO = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def image_dir() -> Path:
    for candidate in (
        os.environ.get("SENNET_IMAGE_DIR"),
        REPO / "build/image",
        REPO / "bazel-bin/images",
    ):
        if candidate and (Path(candidate) / "appliance.qcow2").is_file():
            return Path(candidate)
    pytest.skip("no built image: run images/build or bazel build //images:appliance")


def _boot(image_dir: Path, *extra: str, timeout: int = 110) -> boot.BootResult:
    args = cli.parser().parse_args(
        [
            *("boot", "--image", str(image_dir), "--until-ready", "--quiet"),
            *("--timeout", str(timeout), *extra),
        ]
    )
    return boot.boot(args)


def test_direct_boot_attaches_the_agent_to_the_monitored_nic_and_hides_the_token(
    image_dir: Path,
) -> None:
    result = _boot(image_dir, "--control-plane", "10.0.2.2:7443", "--bootstrap-token", "tok-s3cret")
    assert result.ready_s is not None, result.console[-3000:]
    assert result.attached == ("eth1",)
    assert "sennet-init: event=state_format dev=/dev/vda6 first_boot=1" in result.console
    # direct boot: the cmdline artefact names slot a and this build's identity
    ident = json.loads((image_dir / "image.json").read_text())
    assert f"sennet-init: event=image slot=a version={ident['version']}" in result.console
    assert "event=root_mounted root=/dev/vda2 agent=/dev/vda3 test=none slot=a" in result.console
    assert (
        "event=provisioned source=cmdline key=control_plane value=10.0.2.2:7443" in result.console
    )
    assert "event=provisioned source=cmdline key=bootstrap_token value=(set)" in result.console
    assert "control_plane=10.0.2.2:7443" in result.console.split("event=agent_ready", 1)[1]
    assert "tok-s3cret" not in result.console


def test_uefi_boot_from_the_raw_disk_takes_provisioning_from_the_esp(
    image_dir: Path, tmp_path: Path
) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        'interfaces = ["eth1"]\nbpf_dir = "/opt/sennet/bpf"\n'
        'control_plane = "10.0.2.2:9443"\nmetrics_listen = ""\n'
    )
    result = _boot(image_dir, "--mode", "uefi", "--provision", str(conf))
    assert result.ready_s is not None, result.console[-3000:]
    assert result.attached == ("eth1",)
    assert "event=provisioned source=esp:sennet/agent.toml" in result.console
    ready = result.console.split("event=agent_ready", 1)[1].splitlines()[0]
    assert "control_plane=10.0.2.2:9443" in ready and "metrics=off" in ready
    # systemd-boot chose slot a's UKI, the only entry of the factory image
    assert "event=root_mounted root=/dev/vda2 agent=/dev/vda3 test=none slot=a" in result.console

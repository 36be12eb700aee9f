"""Where things are on the appliance; tests point every path at files and directories.

One frozen value carries the locations the updater touches, so the same code
runs on the device (block devices, the mounted ESP) and in host tests (files as
slot partitions, a directory as the ESP) without a single branch on "test mode".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sennet import __version__

ARCH = "x86_64"


def default_compatible() -> str:
    """`sennet-appliance/x86_64/<variant>`: the test variant has its overlay at /opt/sennet-test."""
    variant = "test" if os.path.ismount("/opt/sennet-test") else "production"
    return f"sennet-appliance/{ARCH}/{variant}"


@dataclass(frozen=True)
class Device:
    esp: Path = Path("/run/esp")
    state_dir: Path = Path("/var/lib/sennet/update")
    agent_dir: Path = Path("/var/lib/sennet/agent")
    keyring: Path = Path("/usr/share/sennet/update-keys")
    partitions: Path = Path("/run/sennet/partitions")
    image_env: Path = Path("/run/sennet/image.env")
    cmdline: Path = Path("/proc/cmdline")
    sys_block: Path = Path("/sys/class/block")
    boot_id: Path = Path("/proc/sys/kernel/random/boot_id")
    agent_exits: Path = Path("/run/sennet/agent-exits")  # the agent's supervisor writes it
    compatible: str = field(default_factory=default_compatible)
    default_version: str = __version__

    @property
    def inbox(self) -> Path:
        """Bundles the agent fetched (its own directory: read as data only)."""
        return self.agent_dir / "updates"

    @property
    def health(self) -> Path:
        return self.agent_dir / "health.json"

    @property
    def spool(self) -> Path:
        """Root's copies of fetched bundles, waiting for their time."""
        return self.state_dir / "spool"

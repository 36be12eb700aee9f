"""Bundles on a USB stick: the way in for a box with no network to us and no shell.

A production appliance has no SSH and may never reach a control plane; a field
engineer carries the update on a stick. Plugging it in is the whole procedure:
the daemon sees a new volume on a USB bus, mounts it read-only (nosuid, nodev,
noexec), and offers each `*.bundle` at its top level, newest version first, to
`install`, which verifies it whole (signature against the image's keyring first)
before writing a byte. The first one installed wins: the stick is unmounted and
the box reboots into the new slot on trial, where the usual health check commits
or rolls it back. A refusal is recorded as any refusal is; a bundle of the running
version is skipped without a record, so a stick left in after the update does not
turn the committed outcome into "refused same_version" at the next boot; nor is a
version installed again whose last outcome was a rollback or a failed write (left in,
it would install, fail and roll back at every boot). Each volume is looked at once per
insertion and per daemon run.

The USB drivers are modules in the root layer, loaded when the daemon first looks,
after the boot's health step: counting never waits for USB.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sennet.common.log import event
from sennet.update import bundle, slots, versions
from sennet.update import manifest as manifest_mod
from sennet.update.device import Device
from sennet.update.errors import Refused, UpdateFailed
from sennet.update.install import Settings, install
from sennet.update.state import Store

log = logging.getLogger("sennet.update")
_USB_BUS = re.compile(r"usb\d+")
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"
# A version whose last outcome was one of these is not installed again from a stick (the
# control plane's offers follow the same rule); a newer version is.
NOT_AGAIN = ("rolled_back", "failed")

Run = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def modules_dir() -> Path:
    """Where the root layer keeps the running kernel's USB-stick drivers (images/ kmods.py)."""
    return Path("/usr/lib/modules") / os.uname().release / "usb-storage"


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def load_drivers(modules_dir: Path, sys_module: Path, run: Run = _run) -> tuple[int, list[str]]:
    """insmod each module of `modules_dir/order` not yet loaded: (loaded now, failed names).

    A module already in /sys/module (loaded before, or built into another kernel) is
    skipped; a failure is reported and the rest still tried (a missing EHCI driver must
    not cost the xHCI one)."""
    try:
        names = (modules_dir / "order").read_text().split()
    except OSError:
        return 0, ["(no module list at " + str(modules_dir / "order") + ")"]
    loaded, failed = 0, []
    for name in names:
        if (sys_module / name.replace("-", "_")).exists():
            continue
        if run(["insmod", str(modules_dir / f"{name}.ko")]).returncode == 0:
            loaded += 1
        else:
            failed.append(name)
    return loaded, failed


def usb_volumes(sys_block: Path) -> dict[str, str]:
    """{block device name: identity} for each volume on a USB bus: a partition, or a whole
    disk that has none (a stick formatted without a table). The identity (device number
    and size) changes when another stick takes the same name."""
    found: dict[str, str] = {}
    if not sys_block.is_dir():
        return found
    for entry in sorted(sys_block.iterdir()):
        try:
            real = entry.resolve()
            if not any(_USB_BUS.fullmatch(part) for part in real.parts):
                continue
            is_partition = (entry / "partition").exists()
            if not is_partition and any((c / "partition").exists() for c in real.iterdir()):
                continue  # the disk's partitions are the volumes
            size = int((entry / "size").read_text())
            number = (entry / "dev").read_text().strip()
        except (OSError, ValueError):
            continue  # vanished while being looked at: the next look sees it settled
        if size > 0:  # a card reader without a card has size 0
            found[entry.name] = f"{number}:{size}"
    return found


def peek_version(path: Path) -> str | None:
    """The version a bundle's manifest claims, unverified: only used to order bundles and to
    skip the running version. None when unreadable (then `install` refuses it by name)."""
    try:
        with path.open("rb") as f:
            raw = bundle.manifest_bytes(f, bundle.members(f, path))
        return manifest_mod.parse(raw).version
    except (OSError, Refused):
        return None


def candidates(mountpoint: Path) -> list[tuple[Path, str | None]]:
    """Top-level regular `*.bundle` files (never through a link), newest claimed version first;
    unreadable ones last, by name."""
    out = []
    for p in sorted(mountpoint.glob("*.bundle")):
        if p.is_file() and not p.is_symlink():
            out.append((p, peek_version(p)))

    def key(item: tuple[Path, str | None]) -> tuple[int, tuple[int, ...]]:
        version = item[1]
        return (0, tuple(-n for n in versions.parse(version))) if version else (1, ())

    return sorted(out, key=key)


@dataclass
class Watcher:
    """What the daemon remembers between looks: the volumes already handled, drivers."""

    modules_dir: Path
    mount_dir: Path = Path("/run/sennet/usb")
    sys_module: Path = Path("/sys/module")
    dev_dir: Path = Path("/dev")
    run: Run = _run
    seen: dict[str, str] = field(default_factory=dict)
    drivers_loaded: bool = False

    def look(self, dev: Device, settings: Settings, reboot: Callable[[], None]) -> bool:
        """Handle each newly inserted USB volume; True if a bundle was installed (and
        `reboot` called)."""
        if not self.drivers_loaded:
            self.drivers_loaded = True
            loaded, failed = load_drivers(self.modules_dir, self.sys_module, self.run)
            level = logging.WARNING if failed else logging.INFO
            event(log, "usb_drivers", level, loaded=loaded, failed=",".join(failed) or "none")
        present = usb_volumes(dev.sys_block)
        for name in [n for n in self.seen if n not in present]:
            del self.seen[name]
            event(log, "usb_volume_removed", device=name)
        for name, identity in present.items():
            if self.seen.get(name) == identity:
                continue
            self.seen[name] = identity
            entry = self._volume(name, dev, settings)
            if entry is not None:  # unmounted: the stick may be pulled during the reboot
                event(log, "rebooting", into=entry.name, source="usb")
                reboot()
                return True
        return False

    def _volume(self, name: str, dev: Device, settings: Settings) -> Path | None:
        self.mount_dir.mkdir(parents=True, exist_ok=True)
        argv = ["mount", "-o", MOUNT_OPTIONS, str(self.dev_dir / name), str(self.mount_dir)]
        done = self.run(argv)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().replace("\n", " ")[:200]
            event(log, "usb_volume_unreadable", logging.WARNING, device=name, detail=detail)
            return None
        try:
            return self._bundles(name, dev, settings)
        finally:
            self.run(["umount", str(self.mount_dir)])

    def _bundles(self, name: str, dev: Device, settings: Settings) -> Path | None:
        """Install the first bundle that passes; its boot entry, or None."""
        running = slots.booted(dev.image_env, dev.cmdline, dev.default_version).version
        last = Store(dev.state_dir).status().get("last_outcome") or {}
        found = candidates(self.mount_dir)
        event(log, "usb_volume", device=name, bundles=len(found))
        for path, version in found:
            if version == running:
                event(log, "usb_bundle_skipped", bundle=path.name, reason="running_version")
                continue
            if version == last.get("to_version") and last.get("result") in NOT_AGAIN:
                # a stick left in would otherwise install, fail and roll back at every boot
                event(
                    log,
                    "usb_bundle_skipped",
                    bundle=path.name,
                    reason=f"{last.get('result')}_before",
                    detail=str(last.get("reason")),
                )
                continue
            event(log, "usb_bundle_installing", bundle=path.name, version=version or "unreadable")
            try:
                return install(dev, settings, path)
            except Refused as exc:
                event(
                    log,
                    "update_refused",
                    logging.WARNING,
                    bundle=path.name,
                    reason=exc.reason,
                    detail=exc.detail,
                )
                continue
            except (UpdateFailed, OSError) as exc:  # the stick pulled mid-read, a bad block
                event(log, "update_failed", logging.ERROR, bundle=path.name, error=str(exc))
                return None
        return None

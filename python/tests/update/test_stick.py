"""Bundles on a USB stick: a real filesystem on a loop device, really mounted read-only.

What cannot be real on this host is the USB bus: the kernel's sysfs shows no USB
disk here, so `usb_volumes` reads a small sysfs-shaped tree whose device links run
through a `usbN` directory, as a stick's do; the block device it names is the real
loop device. The VM suite plugs a real (emulated) USB stick into the appliance.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sennet.common.log import KeyValueFormatter
from sennet.update import stick
from sennet.update.device import Device
from sennet.update.install import Settings
from sennet.update.state import Store
from tests.update.bundles import Images, boot_as, entry_names, make_bundle
from tests.update.conftest import Keys

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loop devices and mount")


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The updater's log lines as the appliance's console shows them."""
    fmt = KeyValueFormatter()
    return [fmt.format(r) for r in caplog.records if r.name == "sennet.update"]


class Reboots:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def fake_sysfs(base: Path, volumes: dict[str, tuple[str, str, int, bool]]) -> Path:
    """class/block links for {name: (bus directory, "MAJ:MIN", sectors, is_partition)}."""
    cls = base / "class" / "block"
    cls.mkdir(parents=True)
    for name, (bus, number, sectors, is_partition) in volumes.items():
        dev = base / "devices" / "pci0000:00" / bus / "host0" / "block" / name
        dev.mkdir(parents=True)
        (dev / "size").write_text(f"{sectors}\n")
        (dev / "dev").write_text(f"{number}\n")
        if is_partition:
            (dev / "partition").write_text("1\n")
        (cls / name).symlink_to(dev)
    return cls


def test_only_volumes_on_a_usb_bus_are_found_partitions_before_their_disk(tmp_path: Path) -> None:
    cls = fake_sysfs(
        tmp_path,
        {
            "vda": ("0000:00:03.0/virtio1", "254:0", 1000, False),
            "sda": ("0000:00:04.0/usb2/2-1/2-1:1.0", "8:0", 2000, False),
            "sdb": ("0000:00:04.0/usb2/2-2/2-2:1.0", "8:16", 4000, False),
            "sdc": ("0000:00:04.0/usb2/2-3/2-3:1.0", "8:32", 0, False),  # reader, no card
        },
    )
    sda = cls.joinpath("sda").resolve()
    sda1 = sda / "sda1"
    sda1.mkdir()
    (sda1 / "partition").write_text("1\n")
    (sda1 / "size").write_text("1990\n")
    (sda1 / "dev").write_text("8:1\n")
    (cls / "sda1").symlink_to(sda1)
    assert stick.usb_volumes(cls) == {"sda1": "8:1:1990", "sdb": "8:16:4000"}


def test_each_driver_is_loaded_once_in_order_and_a_failure_does_not_stop_the_rest(
    tmp_path: Path,
) -> None:
    mods, sysmod = tmp_path / "mods", tmp_path / "sys-module"
    mods.mkdir()
    (sysmod / "usb_common").mkdir(parents=True)  # loaded already
    (mods / "order").write_text("usb-common\nusbcore\nehci-hcd\nusb-storage\n")
    calls: list[list[str]] = []

    def insmod(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 1 if "ehci" in argv[1] else 0, "", "")

    assert stick.load_drivers(mods, sysmod, insmod) == (2, ["ehci-hcd"])
    assert calls == [["insmod", str(mods / f"{n}.ko")] for n in ("usbcore", "ehci-hcd")] + [
        ["insmod", str(mods / "usb-storage.ko")]
    ]
    assert stick.load_drivers(tmp_path / "none", sysmod, insmod)[0] == 0


@pytest.fixture
def make_stick(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """make_stick(*files): an ext4 filesystem holding `files` at its top, on a loop device;
    the device's name. (This host's kernel has no vfat; the VM suite's stick is FAT.)"""
    loops: list[str] = []

    def make(*files: Path) -> str:
        top = tmp_path / f"stick-{len(loops)}"
        top.mkdir()
        for f in files:
            (top / f.name).write_bytes(f.read_bytes())
        image = tmp_path / f"stick-{len(loops)}.img"
        subprocess.run(
            ["mke2fs", "-q", "-t", "ext4", "-d", str(top), str(image), "32M"],
            check=True,
            capture_output=True,
        )
        loops.append(
            subprocess.run(
                ["losetup", "--find", "--show", str(image)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
        return Path(loops[-1]).name

    yield make
    for loop in loops:
        subprocess.run(["losetup", "--detach", loop], check=False)


def watcher(tmp_path: Path, loop: str, name: str = "w") -> stick.Watcher:
    mods = tmp_path / "mods"
    mods.mkdir(exist_ok=True)
    (mods / "order").write_text("")
    return stick.Watcher(mods, mount_dir=tmp_path / f"mnt-{name}", sys_module=tmp_path)


def usb_device(device: Device, tmp_path: Path, loop: str) -> Device:
    number = (Path("/sys/class/block") / loop / "dev").read_text().strip()
    cls = fake_sysfs(tmp_path / "sys", {loop: ("0000:00:04.0/usb1/1-1/1-1:1.0", number, 8, False)})
    return dataclasses.replace(device, sys_block=cls)


def mounted(path: Path) -> bool:
    return str(path) in Path("/proc/self/mounts").read_text()


def test_the_newest_bundle_that_passes_is_installed_and_the_stick_unmounted(
    tmp_path: Path,
    keys: Keys,
    device: Device,
    make_stick: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = make_bundle(tmp_path / "a-0.2.0.bundle", keys.good, Images("0.2.0"))
    tampered = make_bundle(
        tmp_path / "b-0.3.0.bundle",
        keys.good,
        Images("0.3.0"),
        member_data={"root.img": b"\0" * Images().sizes["root"]},
    )
    stranger = make_bundle(tmp_path / "c-0.4.0.bundle", keys.stranger, Images("0.4.0"))
    loop = make_stick(good, tampered, stranger)
    dev = usb_device(device, tmp_path, loop)
    w, reboots = watcher(tmp_path, loop), Reboots()
    with caplog.at_level(logging.INFO, logger="sennet.update"):
        assert w.look(dev, Settings(), reboots) is True
    assert reboots.count == 1
    assert entry_names(dev) == ["sennet-a-0.1.0.efi", "sennet-b-0.2.0+2-0.efi"]
    tried = [x for x in lines(caplog) if "event=usb_bundle_installing" in x]
    assert [t.split("bundle=")[1].split()[0] for t in tried] == [
        "c-0.4.0.bundle",
        "b-0.3.0.bundle",
        "a-0.2.0.bundle",
    ]
    refusals = [x for x in lines(caplog) if "event=update_refused" in x]
    assert len(refusals) == 2
    assert "bundle=c-0.4.0.bundle reason=signature" in refusals[0]
    assert "bundle=b-0.3.0.bundle reason=digest" in refusals[1]
    assert any("event=rebooting into=sennet-b-0.2.0+2-0.efi source=usb" in x for x in lines(caplog))
    assert not mounted(w.mount_dir)
    # the same volume is not looked at again while it stays in
    assert w.look(dev, Settings(), reboots) is False
    assert reboots.count == 1


def test_a_stick_left_in_does_not_reinstall_the_running_or_a_rolled_back_version(
    tmp_path: Path,
    keys: Keys,
    device: Device,
    make_stick: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = make_stick(make_bundle(tmp_path / "u.bundle", keys.good, Images("0.2.0")))
    dev = usb_device(device, tmp_path, loop)
    # after the update: 0.2.0 runs and is committed; the next boot's daemon sees the stick
    boot_as(dev, "b", "0.2.0")
    Store(dev.state_dir).outcome("committed", "heartbeat_acked", "0.1.0", "0.2.0")
    with caplog.at_level(logging.INFO, logger="sennet.update"):
        assert watcher(tmp_path, loop, "1").look(dev, Settings(), Reboots()) is False
    assert any(
        "event=usb_bundle_skipped bundle=u.bundle reason=running_version" in x
        for x in lines(caplog)
    )
    assert Store(dev.state_dir).status()["last_outcome"]["result"] == "committed"
    # 0.2.0 was rolled back instead, and the box runs 0.1.0 again
    boot_as(dev, "a", "0.1.0")
    Store(dev.state_dir).outcome("rolled_back", "no_health_report", "0.1.0", "0.2.0")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sennet.update"):
        assert watcher(tmp_path, loop, "2").look(dev, Settings(), Reboots()) is False
    assert any(
        "event=usb_bundle_skipped bundle=u.bundle reason=rolled_back_before "
        "detail=no_health_report" in x
        for x in lines(caplog)
    )
    assert entry_names(dev) == ["sennet-a-0.1.0.efi"]


def test_a_volume_that_does_not_mount_is_reported_once_and_nothing_written(
    tmp_path: Path, device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(4 << 20))
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(blank)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        dev = usb_device(device, tmp_path, Path(loop).name)
        w = watcher(tmp_path, Path(loop).name)
        with caplog.at_level(logging.INFO, logger="sennet.update"):
            assert w.look(dev, Settings(), Reboots()) is False
            assert w.look(dev, Settings(), Reboots()) is False
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False)
    assert sum("event=usb_volume_unreadable" in x for x in lines(caplog)) == 1
    assert entry_names(dev) == ["sennet-a-0.1.0.efi"]
    assert "last_outcome" not in Store(dev.state_dir).status()

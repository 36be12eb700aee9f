"""The commit/rollback state machine across boots, with systemd-boot's renames played by hand.

Between boots the test does what the firmware would: systemd-boot decrements the
booted trial entry's counter (`+2-0` -> `+1-1`), and the kernel command line of
the chosen UKI becomes image.env. Everything else is the updater's real code.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sennet.update import boot
from sennet.update.device import Device
from sennet.update.install import Settings, install
from sennet.update.state import Store
from tests.update.bundles import boot_as, entry_names, make_bundle
from tests.update.conftest import Keys

BOOT_ID = "11111111-2222-3333-4444-555555555555"


def firmware_tries(dev: Device, name: str) -> None:
    """systemd-boot's boot assessment on choosing entry `name`: left-1, done+1."""
    directory = dev.esp / "EFI/Linux"
    stem, counter = name.removesuffix(".efi").split("+")
    left, done = (int(x) for x in counter.split("-"))
    os.rename(directory / name, directory / f"{stem}+{left - 1}-{done + 1}.efi")


def agent_reports(
    dev: Device, attached: list[str], ack: float | None, cp: bool = True, boot_id: str = BOOT_ID
) -> None:
    dev.agent_dir.mkdir(parents=True, exist_ok=True)
    health = {
        "monitored": ["eth1", "eth2"],
        "attached": attached,
        "last_ack_unix": ack,
        "control_plane": cp,
        "boot_id": boot_id,
    }
    (dev.agent_dir / "health.json").write_text(json.dumps(health))


class Reboots:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def installed_and_booted_b(tmp_path: Path, keys: Keys, dev: Device) -> None:
    install(dev, Settings(tries=2), make_bundle(tmp_path / "b.bundle", keys.good))
    firmware_tries(dev, "sennet-b-0.2.0+2-0.efi")
    boot_as(dev, "b", "0.2.0")


def checks(result: str | None = "self_test_failed: eth1") -> boot.Checks:
    return boot.Checks(timeout_s=0.6, self_test=lambda nics: result, poll_s=0.05)


def test_acknowledged_heartbeat_commits_and_the_next_boot_stays(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    installed_and_booted_b(tmp_path, keys, device)
    agent_reports(device, ["eth1", "eth2"], ack=time.time())
    reboots = Reboots()
    assert boot.on_boot(device, checks(), reboots) == "committed"
    assert reboots.count == 0
    assert entry_names(device) == ["sennet-a-0.1.0.efi", "sennet-b-0.2.0.efi"]
    status = Store(device.state_dir).status()
    assert (status["booted_slot"], status["active_slot"], status["version"]) == ("b", "b", "0.2.0")
    last = status["last_outcome"]
    assert (last["result"], last["reason"], last["from_version"], last["to_version"]) == (
        "committed",
        "heartbeat_acked",
        "0.1.0",
        "0.2.0",
    )
    assert not Store(device.state_dir).trial_path.exists()
    # the next boot of the committed slot changes nothing
    assert boot.on_boot(device, checks(), reboots) == "nothing"
    assert entry_names(device) == ["sennet-a-0.1.0.efi", "sennet-b-0.2.0.efi"]
    assert Store(device.state_dir).status()["last_outcome"] == last


def test_without_a_control_plane_the_self_test_decides(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    installed_and_booted_b(tmp_path, keys, device)
    agent_reports(device, ["eth1", "eth2"], ack=None, cp=False)
    seen: list[list[str]] = []

    def self_test(nics: list[str]) -> str | None:
        seen.append(nics)
        return None

    result = boot.on_boot(device, boot.Checks(5.0, self_test, 0.05), Reboots())
    assert result == "committed"
    assert seen == [["eth1", "eth2"]]
    assert Store(device.state_dir).status()["last_outcome"]["reason"] == "self_test"


def test_agent_not_attached_rolls_back_and_the_old_slot_cleans_up(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    installed_and_booted_b(tmp_path, keys, device)
    agent_reports(device, ["eth2"], ack=time.time())
    reboots = Reboots()
    assert boot.on_boot(device, checks(), reboots) == "rebooting"
    assert reboots.count == 1
    assert entry_names(device) == ["sennet-a-0.1.0.efi", "sennet-b-0.2.0+0-1.efi"]
    last = Store(device.state_dir).status()["last_outcome"]
    assert (last["result"], last["reason"]) == ("rolled_back", "agent_not_attached: eth1")
    # systemd-boot skips the bad entry (left=0): slot a boots
    boot_as(device, "a", "0.1.0")
    assert boot.on_boot(device, checks(), reboots) == "rolled_back"
    assert entry_names(device) == ["sennet-a-0.1.0.efi"]  # never tried again
    status = Store(device.state_dir).status()
    assert status["last_outcome"] == last  # the reason found on slot b is kept
    assert (status["booted_slot"], status["active_slot"]) == ("a", "a")
    assert not Store(device.state_dir).trial_path.exists()


def test_an_agent_that_keeps_exiting_rolls_back_before_the_timeout(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    installed_and_booted_b(tmp_path, keys, device)
    # the supervisor's record: the agent never wrote a report and died a third time
    device.agent_exits.write_text("exits=3 status=2 ran_s=7\n")
    slow = boot.Checks(timeout_s=600.0, self_test=lambda nics: None, poll_s=0.05)
    assert boot.on_boot(device, slow, Reboots()) == "rebooting"
    last = Store(device.state_dir).status()["last_outcome"]
    assert (last["result"], last["reason"]) == (
        "rolled_back",
        "agent_exited: 3 times, last status 2",
    )


def test_fewer_exits_or_an_attached_agent_wait_for_the_usual_verdict(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    installed_and_booted_b(tmp_path, keys, device)
    device.agent_exits.write_text("exits=2 status=2 ran_s=7\n")
    assert boot.on_boot(device, checks(), Reboots()) == "rebooting"
    assert Store(device.state_dir).status()["last_outcome"]["reason"] == "no_health_report"


def test_exits_do_not_fail_an_agent_that_is_attached(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    installed_and_booted_b(tmp_path, keys, device)
    device.agent_exits.write_text("exits=4 status=1 ran_s=3\n")  # died, restarted, attached
    agent_reports(device, ["eth1", "eth2"], ack=time.time())
    assert boot.on_boot(device, checks(), Reboots()) == "committed"
    assert Store(device.state_dir).status()["last_outcome"]["reason"] == "heartbeat_acked"


def test_a_crash_that_runs_out_the_counter_is_tries_exhausted(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    installed_and_booted_b(tmp_path, keys, device)
    # slot b hangs before the updater ever runs, twice: the firmware counts both tries
    firmware_tries(device, "sennet-b-0.2.0+1-1.efi")
    boot_as(device, "a", "0.1.0")
    assert boot.on_boot(device, checks(), Reboots()) == "rolled_back"
    assert entry_names(device) == ["sennet-a-0.1.0.efi"]
    last = Store(device.state_dir).status()["last_outcome"]
    assert (last["result"], last["reason"], last["from_version"], last["to_version"]) == (
        "rolled_back",
        "tries_exhausted",
        "0.1.0",
        "0.2.0",
    )


def test_a_health_file_from_an_earlier_boot_does_not_pass(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    installed_and_booted_b(tmp_path, keys, device)
    agent_reports(device, ["eth1", "eth2"], ack=time.time(), boot_id="an-earlier-boot")
    assert boot.on_boot(device, checks(), Reboots()) == "rebooting"
    last = Store(device.state_dir).status()["last_outcome"]
    assert last["reason"] == "no_health_report"


def test_an_ack_from_before_this_boot_does_not_pass(
    tmp_path: Path, keys: Keys, device: Device
) -> None:
    installed_and_booted_b(tmp_path, keys, device)
    agent_reports(device, ["eth1", "eth2"], ack=1.0)  # 1970: before this boot began
    assert boot.on_boot(device, checks("self_test_failed: eth2"), Reboots()) == "rebooting"
    last = Store(device.state_dir).status()["last_outcome"]
    assert last["reason"] == "self_test_failed: eth2"  # unreachable CP: the self-test decided


def test_a_linked_health_file_is_not_followed(tmp_path: Path, keys: Keys, device: Device) -> None:
    installed_and_booted_b(tmp_path, keys, device)
    real = tmp_path / "elsewhere.json"
    real.write_text(
        json.dumps(
            {
                "monitored": ["eth1"],
                "attached": ["eth1"],
                "last_ack_unix": time.time(),
                "control_plane": True,
                "boot_id": BOOT_ID,
            }
        )
    )
    device.agent_dir.mkdir(parents=True, exist_ok=True)
    (device.agent_dir / "health.json").symlink_to(real)
    assert boot.on_boot(device, checks(), Reboots()) == "rebooting"
    assert Store(device.state_dir).status()["last_outcome"]["reason"] == "no_health_report"

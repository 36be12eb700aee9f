"""What the updater does once per boot: judge a slot on trial, or clean up after a failed one.

- Booted entry on trial (`+L-D` in its name): run the health check. Pass →
  commit (drop the counter), outcome committed. Fail → outcome rolled_back with
  the check's reason, mark the entry bad (left=0) and reboot: systemd-boot then
  starts the last good slot.
- Booted a committed entry while the other slot's entry is bad (left=0): its
  trial failed, by the check above or because a crash or hang ran the counter
  out. Record rolled_back (reason `tries_exhausted` unless a reason was already
  recorded for that version) and delete the entry so it is never tried again.
status.json's booted/active slot, version and digest are refreshed every boot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sennet.common.log import event
from sennet.update import esp, health, slots
from sennet.update.device import Device
from sennet.update.state import Store

log = logging.getLogger("sennet.update")


@dataclass(frozen=True)
class Checks:
    timeout_s: float
    self_test: Callable[[list[str]], str | None]
    poll_s: float = 1.0


def _boot_id(dev: Device) -> str:
    try:
        return dev.boot_id.read_text().strip()
    except OSError:
        return ""


def _record_identity(store: Store, booted: slots.Booted, active: str) -> None:
    store.update_status(
        booted_slot=booted.slot,
        active_slot=active,
        version=booted.version,
        image_digest=booted.image_digest,
    )


def judge_trial(
    dev: Device, entry: esp.Entry, booted: slots.Booted, checks: Checks, reboot: Callable[[], None]
) -> str:
    """Health-check the slot on trial; commit it ("committed"), or mark it bad and reboot
    ("rebooting")."""
    store = Store(dev.state_dir)
    trial = store.trial()
    from_version = str(trial.get("from_version", "unknown"))
    _record_identity(store, booted, slots.other(booted.slot))
    event(
        log, "trial_check_started", slot=booted.slot, version=booted.version, entry=entry.path.name
    )
    verdict = health.check(
        dev.health,
        _boot_id(dev),
        checks.timeout_s,
        checks.self_test,
        checks.poll_s,
        agent_exits=dev.agent_exits,
    )
    if verdict.passed:
        with esp.writable(dev.esp):
            committed = esp.commit(entry)
        store.outcome("committed", verdict.reason, from_version, booted.version)
        store.end_trial()
        _record_identity(store, booted, booted.slot)
        event(log, "update_committed", slot=booted.slot, entry=committed.name, by=verdict.reason)
        return "committed"
    store.outcome("rolled_back", verdict.reason, from_version, booted.version)
    with esp.writable(dev.esp):
        bad = esp.mark_bad(entry)
    event(log, "update_rolled_back", logging.WARNING, slot=booted.slot, reason=verdict.reason)
    event(log, "rebooting", entry_marked_bad=bad.name)
    reboot()
    return "rebooting"


def after_failed_trial(dev: Device, booted: slots.Booted) -> str | None:
    """On a good slot: record and delete the other slot's bad entry, if any. The result."""
    store = Store(dev.state_dir)
    bad = [e for e in esp.entries(dev.esp) if e.slot != booted.slot and e.bad]
    if not bad:
        return None
    trial = store.trial()
    last = store.status().get("last_outcome") or {}
    for entry in bad:
        already = last.get("result") == "rolled_back" and last.get("to_version") == entry.version
        if not already:
            from_version = str(trial.get("from_version", booted.version))
            store.outcome("rolled_back", "tries_exhausted", from_version, entry.version)
        with esp.writable(dev.esp):
            entry.path.unlink()
        event(log, "bad_entry_removed", entry=entry.path.name, slot=entry.slot)
    store.end_trial()
    return "rolled_back"


def on_boot(dev: Device, checks: Checks, reboot: Callable[[], None]) -> str:
    """The boot-time step: "committed", "rebooting" (trial failed), "rolled_back" (an
    earlier trial failed, cleaned up now) or "nothing"."""
    booted = slots.booted(dev.image_env, dev.cmdline, dev.default_version)
    mine = esp.find(dev.esp, booted.slot, booted.version)
    if mine is not None and mine.on_trial:
        return judge_trial(dev, mine, booted, checks, reboot)
    result = after_failed_trial(dev, booted)
    _record_identity(Store(dev.state_dir), booted, booted.slot)
    return result or "nothing"

"""`daemon`: the boot-time judgement, then a watch on fetched bundles and USB sticks.

Started as root by busybox init through `supervise-update`. The boot step runs
first and alone (a slot on trial is judged before anything else may touch the
ESP); then, every `poll_s`, bundles the agent dropped are taken into root's
spool and each is installed when its `apply_at` comes, and a newly plugged USB
stick's bundles are offered to `install` (see stick.py); after an install the
device reboots into it. A refused or failed bundle is recorded (by `install`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sennet.common.log import event
from sennet.update import boot, inbox, stick
from sennet.update.device import Device
from sennet.update.errors import Refused, UpdateFailed
from sennet.update.install import Settings, install

log = logging.getLogger("sennet.update")


def apply_due(dev: Device, settings: Settings, reboot: Callable[[], None]) -> bool:
    """Take new requests, install the first one that is due; True if it was installed."""
    taken, rejected = inbox.take(dev.inbox, dev.spool)
    for item in taken:
        event(log, "update_request_taken", bundle=item.bundle.name, apply_at=item.apply_at)
    for name in rejected:
        event(log, "update_request_rejected", logging.WARNING, request=name)
    for item in inbox.waiting(dev.spool):
        if not inbox.due(item.apply_at, time.gmtime()):
            continue
        try:
            entry = install(dev, settings, item.bundle)
        except Refused as exc:
            event(log, "update_refused", logging.WARNING, reason=exc.reason, detail=exc.detail)
            inbox.drop(item)
            continue
        except UpdateFailed as exc:
            event(log, "update_failed", logging.ERROR, error=str(exc))
            inbox.drop(item)
            continue
        inbox.drop(item)
        event(log, "rebooting", into=entry.name)
        reboot()
        return True
    return False


def run(
    dev: Device,
    settings: Settings,
    checks: boot.Checks,
    reboot: Callable[[], None],
    stop: threading.Event,
    poll_s: float = 10.0,
    usb: stick.Watcher | None = None,
) -> None:
    result = boot.on_boot(dev, checks, reboot)
    event(log, "boot_step_done", result=result)
    if result == "rebooting":
        return
    while not stop.is_set():
        try:
            if apply_due(dev, settings, reboot):
                return
        except OSError as exc:  # a full state partition, a vanished file: try again later
            event(log, "inbox_failed", logging.ERROR, error=repr(exc))
        try:
            if usb is not None and usb.look(dev, settings, reboot):
                return
        except OSError as exc:  # sysfs or the mount point misbehaving: look again later
            event(log, "usb_look_failed", logging.ERROR, error=repr(exc))
        stop.wait(poll_s)

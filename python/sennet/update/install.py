"""`install BUNDLE`: every check first, then the inactive slot, then (last) its boot entry.

Order matters for what a power cut or a killed process leaves behind:
1. verify the bundle fully (bundle.verify) and find the inactive slot's
   partitions and that the images fit: a refusal here has written nothing;
2. remove every ESP entry of the inactive slot, so a half-written slot can never
   be booted;
3. write root and agent to the inactive partitions, fsync, read back, compare;
4. record the trial (trial.json), then write the slot's UKI under a temporary
   name and rename it to `sennet-<slot>-<version>+<tries>-0.efi`.
Only step 4's rename makes the new slot bootable; the running slot is untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sennet.common.log import event
from sennet.update import bundle, esp, slots
from sennet.update.device import Device
from sennet.update.errors import Refused, UpdateFailed
from sennet.update.state import Store

log = logging.getLogger("sennet.update")


@dataclass(frozen=True)
class Settings:
    min_version: str = "0.0.0"
    tries: int = 2


def _targets(dev: Device, slot: str, verified: bundle.Verified) -> dict[str, Path]:
    """The inactive slot's root and agent partitions, each checked to hold its image."""
    out = {}
    for image in ("root", "agent"):
        role = f"{image}-{slot}"
        path = slots.device(role, dev.partitions, dev.sys_block)
        if path is None:
            raise Refused("no_slot", f"no partition for {role}")
        need, room = verified.manifest.images[image].size, slots.capacity(path)
        if need > room:
            raise Refused("too_large", f"{image} is {need} bytes, {role} ({path}) holds {room}")
        out[image] = path
    return out


def install(dev: Device, settings: Settings, path: Path) -> Path:
    """Install the bundle into the inactive slot on trial; the new entry's path.

    Raises `Refused` (recorded as refused, nothing written) or `UpdateFailed`
    (recorded as failed; the inactive slot has no entry).
    """
    store = Store(dev.state_dir)
    booted = slots.booted(dev.image_env, dev.cmdline, dev.default_version)
    policy = bundle.Policy(dev.compatible, booted.version, settings.min_version, dev.keyring)
    target = slots.other(booted.slot)
    to_version = "unknown"
    try:
        verified = bundle.verify(path, policy)
    except Refused as exc:
        store.outcome("refused", exc.reason, booted.version, to_version)
        raise
    m = verified.manifest
    try:
        try:
            parts = _targets(dev, target, verified)
        except Refused as exc:
            store.outcome("refused", exc.reason, booted.version, m.version)
            raise
        event(log, "update_verified", version=m.version, slot=target, key=verified.key.name)
        with esp.writable(dev.esp):
            removed = esp.remove_slot(dev.esp, target)
        event(log, "slot_entries_removed", slot=target, removed=",".join(removed) or "none")
        for image in ("root", "agent"):
            ref = m.images[image]
            slots.write_image(parts[image], verified.chunks(image), ref.sha256, ref.size)
            event(log, "slot_written", slot=target, image=image, device=str(parts[image]))
        store.start_trial(target, booted.slot, booted.version, m.version)
        uki = m.images[f"uki-{target}"]
        with esp.writable(dev.esp):
            entry = esp.install(
                dev.esp,
                target,
                m.version,
                settings.tries,
                verified.chunks(f"uki-{target}"),
                uki.sha256,
            )
    except (OSError, UpdateFailed) as exc:
        store.end_trial()
        store.outcome("failed", f"write_failed: {exc}", booted.version, m.version)
        raise UpdateFailed(str(exc)) from exc
    finally:
        verified.close()
    store.update_status(
        booted_slot=booted.slot,
        active_slot=booted.slot,
        version=booted.version,
        image_digest=booted.image_digest,
    )
    event(log, "update_installed", slot=target, version=m.version, entry=entry.name)
    return entry

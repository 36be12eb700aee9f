"""`python3 -m sennet.update.cli`: install a bundle, show status, commit, mark bad, run the daemon.

Runs as root on the appliance. Settings (update_min_version,
update_health_timeout_s, update_tries, update_from_usb, pin_dir, netns) come from the agent's
configuration file, chosen as the agent's supervisor chooses it: the
provisioned one on the state partition while root owns it, else the image's.
A refused bundle prints one line `sennet-update: refused: reason=R detail=D`
and exits 1; nothing was written and the refusal is the last outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from sennet.agent import config as config_mod
from sennet.common import log as log_mod
from sennet.common.errors import EXIT_FAILED, EXIT_OK, UserError, run_main
from sennet.update import boot, daemon, esp, selftest, slots, stick
from sennet.update.device import Device, default_compatible
from sennet.update.errors import Refused, UpdateFailed
from sennet.update.install import Settings, install
from sennet.update.state import Store

PROG = "sennet-update"
IMAGE_CONFIG = Path("/etc/sennet/agent.toml")
PROVISIONED_CONFIG = Path("/var/lib/sennet/etc/agent.toml")


def pick_config() -> Path:
    """The provisioned agent.toml if root owns it and its directory and neither is a link."""
    f = PROVISIONED_CONFIG
    try:
        if all(not p.is_symlink() and p.stat().st_uid == 0 for p in (f.parent, f)):
            return f
    except OSError:
        pass
    return IMAGE_CONFIG


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Signed A/B updates: verify a bundle, write the inactive slot, boot it on "
        "trial, commit it after a health check or roll back to the last good slot.",
    )
    p.add_argument("--config", type=Path, help="agent.toml to read update_* settings from")
    where = p.add_argument_group("locations (defaults are the appliance's)")
    d = Device(compatible="")
    for name, default in (
        ("esp", d.esp),
        ("state-dir", d.state_dir),
        ("agent-dir", d.agent_dir),
        ("keyring", d.keyring),
        ("partitions", d.partitions),
        ("image-env", d.image_env),
    ):
        where.add_argument(f"--{name}", type=Path, default=default, help=f"default {default}")
    where.add_argument("--compatible", help="this device's compatible string [default: detected]")
    sub = p.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="verify BUNDLE, write it to the inactive slot on trial")
    inst.add_argument("bundle", type=Path)
    inst.add_argument("--reboot", action="store_true", help="reboot into the new slot after")
    st = sub.add_parser("status", help="booted and active slot, entries, last outcome")
    st.add_argument("--json", action="store_true")
    sub.add_parser("commit", help="commit the booted slot on trial now, without the check")
    bad = sub.add_parser("mark-bad", help="mark the booted slot on trial bad (rolled back)")
    bad.add_argument("--reboot", action="store_true", help="reboot to the last good slot after")
    sub.add_parser(
        "daemon",
        help="judge a slot on trial at boot, then apply fetched bundles and bundles on a "
        "newly plugged USB stick (update_from_usb)",
    )
    return p


def reboot() -> None:
    subprocess.run(["reboot"], check=False)


def _status(dev: Device) -> dict[str, Any]:
    booted = slots.booted(dev.image_env, dev.cmdline, dev.default_version)
    data = Store(dev.state_dir).status()
    data["running"] = {"slot": booted.slot, "version": booted.version}
    data["entries"] = [e.path.name for e in esp.entries(dev.esp)]
    return data


def _render(data: dict[str, Any]) -> str:
    last = data.get("last_outcome") or {}
    lines = [
        f"booted slot:  {data['running']['slot']} (version {data['running']['version']})",
        f"active slot:  {data.get('active_slot', data['running']['slot'])}",
        f"entries:      {', '.join(data['entries']) or '(none)'}",
    ]
    if last:
        lines.append(
            f"last outcome: {last.get('result')} reason={last.get('reason')} "
            f"{last.get('from_version')} -> {last.get('to_version')} at {last.get('at')}"
        )
    else:
        lines.append("last outcome: (none)")
    return "\n".join(lines)


def _booted_trial(dev: Device) -> tuple[slots.Booted, esp.Entry]:
    booted = slots.booted(dev.image_env, dev.cmdline, dev.default_version)
    entry = esp.find(dev.esp, booted.slot, booted.version)
    if entry is None or not entry.on_trial:
        raise UserError(f"slot {booted.slot} ({booted.version}) is not on trial: nothing to decide")
    return booted, entry


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log_mod.setup("info")
    dev = Device(
        esp=args.esp,
        state_dir=args.state_dir,
        agent_dir=args.agent_dir,
        keyring=args.keyring,
        partitions=args.partitions,
        image_env=args.image_env,
        compatible=args.compatible or default_compatible(),
    )
    cfg = config_mod.build(args.config or pick_config(), require_interfaces=False)
    settings = Settings(min_version=cfg.update_min_version, tries=cfg.update_tries)

    def body() -> int:
        if args.command == "install":
            try:
                entry = install(dev, settings, args.bundle)
            except Refused as exc:
                print(exc.line(), file=sys.stderr)
                return EXIT_FAILED
            except UpdateFailed as exc:
                print(f"{PROG}: failed: {exc}", file=sys.stderr)
                return EXIT_FAILED
            print(f"{PROG}: installed: entry={entry.name} (boots on trial)")
            if args.reboot:
                reboot()
            return EXIT_OK
        if args.command == "status":
            data = _status(dev)
            print(json.dumps(data, indent=2, sort_keys=True) if args.json else _render(data))
            return EXIT_OK
        if args.command == "commit":
            booted, trial = _booted_trial(dev)
            with esp.writable(dev.esp):
                esp.commit(trial)
            store = Store(dev.state_dir)
            from_version = str(store.trial().get("from_version", "unknown"))
            store.outcome("committed", "manual", from_version, booted.version)
            store.end_trial()
            store.update_status(active_slot=booted.slot)
            return EXIT_OK
        if args.command == "mark-bad":
            booted, trial = _booted_trial(dev)
            store = Store(dev.state_dir)
            from_version = str(store.trial().get("from_version", "unknown"))
            store.outcome("rolled_back", "marked_bad", from_version, booted.version)
            with esp.writable(dev.esp):
                esp.mark_bad(trial)
            if args.reboot:
                reboot()
            return EXIT_OK
        checks = boot.Checks(
            cfg.update_health_timeout_s, selftest.for_device(cfg.pin_dir, cfg.netns)
        )
        usb = stick.Watcher(stick.modules_dir()) if cfg.update_from_usb else None
        daemon.run(dev, settings, checks, reboot, threading.Event(), usb=usb)
        return EXIT_OK

    if os.geteuid() != 0 and args.command != "status":
        raise UserError(f"{args.command} writes slots and the ESP: run it as root")
    try:
        return body()
    except UpdateFailed as exc:  # the ESP would not remount, a rename failed: one line
        print(f"{PROG}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))

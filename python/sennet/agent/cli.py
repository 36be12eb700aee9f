"""`sennet-agent`: run the agent, inspect its counters, check or reset its set-up, doctor."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from sennet import __version__
from sennet.agent import config as config_mod
from sennet.agent.config import AgentConfig
from sennet.common import log as log_mod
from sennet.common.errors import EXIT_FAILED, UserError, run_main

DESCRIPTION = """\
Sennet agent: counts packets and bytes per interface and direction with eBPF
programs on the TC ingress/egress hooks, streams large-packet and anomaly
events through a BPF ring buffer, and reports them every interval (to a
control plane, or to the log and an optional local /metrics endpoint).

Settings come from a TOML file (--config), then SENNET_<KEY> environment
variables, then flags; `sennet-agent config --help` lists every key.
Needs root (BPF, TC) on a kernel with BTF and clsact.
"""

EPILOG = """\
examples:
  sennet-agent run --interfaces eth1 --metrics-listen 127.0.0.1:9101
  sennet-agent run --config /etc/sennet/agent.toml
  sennet-agent status --json
  sennet-agent check --config /etc/sennet/agent.toml
  sennet-agent doctor --json
"""


def _columns() -> int:
    """The terminal's width as `shutil.get_terminal_size()` finds it (COLUMNS, then stdout's
    terminal, else 80), which argparse's help formatter would otherwise import shutil for:
    with bz2 and lzma, about 0.4 MiB the running agent would keep (issue 16)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Help(argparse.HelpFormatter):
    """argparse's help formatter with the width from `_columns()` (as it computes it)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        width = _columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width)


class _RawHelp(_Help, argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written (line breaks, the settings table)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sennet-agent",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_RawHelp,
    )
    p.add_argument("--version", action="version", version=f"sennet-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Help)
        sp.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file")
        config_mod.add_flags(sp)
        return sp

    with_config("run", "attach to the interfaces and report until SIGTERM/SIGINT")
    st = with_config("status", "print the pinned counters and event totals (agent need not run)")
    st.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    with_config("check", "validate the settings and load the programs without attaching")
    with_config("reset", "unpin the maps: counters start from zero at the next run")
    dr = with_config(
        "doctor",
        "check what the agent needs (kernel BTF, bpffs, ring buffer, program load, clsact, "
        "capabilities, clock, free space on state_dir): PASS/FAIL with a fix each; exit 1 if "
        "any fails",
    )
    out = dr.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object")
    out.add_argument(
        "--metrics",
        action="store_true",
        help="Prometheus text: sennet_agent_doctor_check{check} 0|1",
    )
    dr.add_argument(
        "--min-free-mib",
        type=int,
        default=16,
        metavar="MIB",
        help="free space wanted on state_dir's filesystem (default 16 MiB; fetching an "
        "offered update needs the bundle's size there too: the updater takes it by rename)",
    )
    cf = sub.add_parser(
        "config",
        help="show the settings table, or the merged settings with --config",
        description="Settings: key, type, default, description, environment variable.\n\n"
        + config_mod.describe(),
        formatter_class=_RawHelp,
    )
    cf.add_argument("--config", type=Path, metavar="FILE", help="show this file merged with env")
    return p


def _load_config(args: argparse.Namespace, require_interfaces: bool = True) -> AgentConfig:
    flags = config_mod.read_flags(args)
    return config_mod.build(args.config, os.environ, flags, require_interfaces)


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    log_mod.setup(cfg.log_level)
    from sennet.agent import marks

    # The boot benchmark's mark: the interpreter and the CLI's imports are done.
    log_mod.event(
        logging.getLogger("sennet.agent"),
        "agent_starting",
        uptime=marks.uptime(),
        process_started=marks.process_started(),
    )
    from sennet.agent.runloop import WorkerDied, run_agent

    try:
        run_agent(cfg)
    except WorkerDied:
        return EXIT_FAILED  # logged as worker_died; the supervisor restarts the agent
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from sennet.agent.pinned_status import read_status, render

    cfg = _load_config(args, require_interfaces=False)
    status = read_status(cfg.pin_dir, cfg.netns, cfg.interfaces)
    print(json.dumps(status, indent=1, sort_keys=True) if args.json else render(status))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    log_mod.setup("warning")
    from sennet.agent.datapath import layout
    from sennet.agent.datapath.bpffs import ensure_pin_dir
    from sennet.agent.datapath.loader_types import DatapathOptions
    from sennet.agent.datapath.manager import DatapathManager
    from sennet.agent.datapath.pins import check_pinned_maps, remove_pins

    if cfg.pin_dir.exists():
        check_pinned_maps(cfg.pin_dir)
    ensure_pin_dir(cfg.pin_dir)
    import tempfile  # this command only: with random, shutil, bz2 and lzma, 0.7 MiB of RSS

    scratch = Path(tempfile.mkdtemp(prefix="check_", dir=cfg.pin_dir))  # bpffs refuses "." in names
    manager = DatapathManager(
        options=DatapathOptions(
            cfg.bpf_dir,
            scratch,
            cfg.ringbuf_bytes,
            cfg.large_packet_bytes,
            tcp_handshakes=cfg.tcp_handshakes_max,
            flow_capacity=cfg.flow_capacity,
            features=layout.features_named(cfg.features),
            xdp=cfg.attach == "xdp",
        ),
        loader=cfg.loader,
        tc_priority=cfg.tc_priority,
        attach_rx=cfg.attach,
        xdp_mode=cfg.xdp_mode,
        state_dir=cfg.state_dir,
        netns=cfg.netns,
    )
    try:
        loaded = manager.load()
        missing = [n for n in cfg.interfaces if manager.tc.lookup(n) is None]
    finally:
        manager.close()
        remove_pins(scratch)  # also removes the emptied scratch directory
    present = [n for n in cfg.interfaces if n not in missing]
    print(
        f"ok: {loaded.loader} loaded sennet_ingress and sennet_egress; "
        f"interfaces {', '.join(present) or 'none'} exist; pin_dir {cfg.pin_dir} usable"
    )
    if missing:  # not an error: `run` waits for them and attaches each when it appears
        print(f"not present yet (run waits for them): {', '.join(missing)}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from sennet.agent import doctor

    cfg = _load_config(args, require_interfaces=False)
    results = doctor.run_checks(cfg.pin_dir, cfg.state_dir, args.min_free_mib << 20)
    if args.json:
        sys.stdout.write(doctor.as_json(results))
    elif args.metrics:
        sys.stdout.write(doctor.as_metrics(results))
    else:
        sys.stdout.write(doctor.as_text(results))
    return 0 if all(r.ok for r in results) else 1


def _cmd_reset(args: argparse.Namespace) -> int:
    from sennet.agent.datapath.pins import remove_pins

    cfg = _load_config(args, require_interfaces=False)
    removed = remove_pins(cfg.pin_dir)
    print(f"unpinned {', '.join(removed) or 'nothing'} in {cfg.pin_dir}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    if args.config is None:
        print(config_mod.describe())
        return 0
    cfg = config_mod.build(args.config, os.environ, {}, require_interfaces=False)
    print(json.dumps(cfg.public_view(), indent=1))
    return 0


COMMANDS = {
    "run": _cmd_run,
    "status": _cmd_status,
    "check": _cmd_check,
    "reset": _cmd_reset,
    "doctor": _cmd_doctor,
    "config": _cmd_config,
}


def main(argv: list[str] | None = None) -> int:
    """Parse, dispatch, and exit by the rule every Sennet command shares (`run_main`)."""
    args = _parser().parse_args(argv)

    def body() -> int:
        try:
            return COMMANDS[args.command](args)
        except PermissionError as exc:
            # Not a bug but the commonest operator mistake: say what is needed, exit 2.
            raise UserError(f"{exc} (BPF and TC need root)") from exc

    return run_main("sennet-agent", body)


if __name__ == "__main__":
    sys.exit(main())

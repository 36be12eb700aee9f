"""`sennet-controlplane`: serve, manage bootstrap tokens, agents' standing and update offers.

    sennet-controlplane --db /var/lib/sennet/controlplane.db serve
    sennet-controlplane token create --name rack-12      # prints the token once; 24h
    sennet-controlplane token create --expires-in 7d --max-uses 20
    sennet-controlplane token list
    sennet-controlplane token revoke 3f2a9c0d1e4b5a6f
    sennet-controlplane agent list
    sennet-controlplane agent reset|disable|enable AGENT_ID
    sennet-controlplane update publish sennet-0.2.0.bundle --apply-at 02:00-04:00
    sennet-controlplane update list
    sennet-controlplane update withdraw 3

Operator mistakes (bad flags, unreadable files, a busy port) print one
`sennet-controlplane: error:` line and exit 2 (`sennet.common.errors.run_main`);
A damaged database file is an operator matter too: whichever command meets it
(`serve` loading the fleet, `token list` reading tokens) says which file and
what SQLite found, and exits 2, rather than printing a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import sys
import time
from pathlib import Path

from sennet.common import log as slog
from sennet.common.errors import UserError, run_main
from sennet.controlplane import settings, tokens, update_offers, validate
from sennet.controlplane.identity import (
    DEFAULT_BOOTSTRAP_LIFETIME_S,
    Identity,
    TokenRow,
    refusal,
    utc,
)
from sennet.controlplane.store import Store

PROG = "sennet-controlplane"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^([0-9]+)([smhd])$")


def duration(text: str) -> float | None:
    """`--expires-in`: a whole number with a unit (`90m`, `24h`, `7d`), or `never` (None)."""
    if text == "never":
        return None
    m = _DURATION.match(text)
    if m is None or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; use e.g. 30m, 24h, 7d, or never"
        )
    return float(int(m.group(1)) * _UNITS[m.group(2)])


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Sennet control plane: receives agent heartbeats over gRPC (and Connect "
        "JSON), stores them in SQLite and serves /health and Prometheus /metrics.",
    )
    settings.add_flags(p, settings.GLOBAL)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "serve",
        help="run the gRPC and HTTP servers",
        description="Run the control plane until SIGTERM or SIGINT. Every flag can also be "
        f"set as {settings.ENV_PREFIX}<NAME> (e.g. {settings.BY_NAME['stale_after'].env}); "
        "a flag overrides the variable.",
    )
    settings.add_flags(s, settings.SERVE)

    t = sub.add_parser(
        "token",
        help="create, list and revoke bootstrap tokens",
        description="Bootstrap tokens let agents enrol new agent ids; each agent then gets "
        "its own token. A bootstrap token cannot take over an agent id that is already "
        "enrolled (see `agent reset`). Only hashes are stored: a token is shown once, when "
        "created.",
    )
    tsub = t.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    c = tsub.add_parser(
        "create",
        help="create a bootstrap token and print it (once)",
        description="Create a bootstrap token and print it on stdout (once). It expires "
        f"after {int(DEFAULT_BOOTSTRAP_LIFETIME_S // 3600)}h unless --expires-in says "
        "otherwise; an expired or used-up token is refused (UNAUTHENTICATED).",
    )
    c.add_argument("--name", default="", help="a note for `token list`, e.g. the site or rack")
    c.add_argument(
        "--expires-in",
        type=duration,
        default=DEFAULT_BOOTSTRAP_LIFETIME_S,
        metavar="DURATION",
        help="lifetime: a number with a unit s, m, h or d (e.g. 30m, 7d), or `never` "
        f"(default: {int(DEFAULT_BOOTSTRAP_LIFETIME_S // 3600)}h)",
    )
    c.add_argument(
        "--max-uses",
        type=_positive,
        default=None,
        metavar="N",
        help="enrolments it may make, e.g. the number of appliances at a site (default: no limit)",
    )
    ls = tsub.add_parser("list", help="list tokens (never their secrets)")
    ls.add_argument("--kind", choices=["bootstrap", "agent", "all"], default="all")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    r = tsub.add_parser("revoke", help="revoke a token by its id (bootstrap or agent)")
    r.add_argument("token_id", help="the id shown by `token list`")

    a = sub.add_parser(
        "agent",
        help="list agents; reset, disable or enable one",
        description="An enrolled agent id can be enrolled again only by the agent itself "
        "(rotation with its own token) or after an operator's `reset`; a bootstrap token "
        "alone is refused. These commands act on the database: a running control plane "
        "sees `reset` and `enable` at once, and `disable` within --agent-token-cache "
        "seconds (agent tokens it checked recently are cached).",
    )
    asub = a.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    als = asub.add_parser("list", help="list agents with their state")
    als.add_argument("--json", action="store_true", help="one JSON object per line")
    for action, text in (
        (
            "reset",
            "allow the next enrolment of this id with a bootstrap token, once (e.g. a "
            "replaced appliance that lost its token); that enrolment revokes the old token",
        ),
        (
            "disable",
            "revoke the agent's tokens and refuse its enrolment (PERMISSION_DENIED, "
            "agent_disabled) until `agent enable`",
        ),
        (
            "enable",
            "undo `disable`: the agent may enrol again with a bootstrap token, once",
        ),
    ):
        act = asub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        act.add_argument("agent_id", help="the id shown by `agent list`")

    u = sub.add_parser(
        "update",
        help="offer an update bundle to appliances; list or withdraw offers",
        description="Offer a signed update bundle (made by images/make-bundle) to appliances. "
        "`publish` copies it into the bundles directory beside the database and reads its "
        "version from its manifest; every appliance (or only the --agent ones) whose "
        "heartbeat reports another running version is offered the newest offer in the "
        "heartbeat's answer, fetches it from the HTTP port (GET /updates/SHA256.bundle with "
        "its agent token, resumable with Range) and hands it to its updater, which checks "
        "the signature against the keys in its image and applies it at --apply-at. A "
        "running control plane sees a new offer within 2 s.",
    )
    usub = u.add_subparsers(dest="update_command", required=True, metavar="ACTION")
    pub = usub.add_parser("publish", help="offer a bundle (prints the offer)")
    pub.add_argument("bundle", type=Path, help="the bundle file (a .bundle tar)")
    pub.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="ID",
        help="offer only to this agent id (repeat for several; default: every appliance)",
    )
    pub.add_argument(
        "--apply-at",
        default="now",
        metavar="WHEN",
        help='"now" (default) or a daily window "HH:MM-HH:MM" in UTC (may cross midnight)',
    )
    uls = usub.add_parser("list", help="list offers not withdrawn, newest first")
    uls.add_argument("--json", action="store_true", help="one JSON object per line")
    wd = usub.add_parser("withdraw", help="stop offering a bundle; its downloads stop too (404)")
    wd.add_argument("offer_id", type=int, help="the id shown by `update list`")
    return p


def _ts(value: float | None) -> str:
    return "-" if value is None else utc(value)


def _identity(db: Path) -> Identity:
    store = Store(db)
    store.migrate()
    return Identity(store)


def _uses(used: int, limit: int | None) -> str:
    return f"{used}/{limit}" if limit is not None else str(used)


def _token_command(args: argparse.Namespace, db: Path) -> int:
    store = _identity(db)
    if args.token_command == "create":
        token = store.create_bootstrap_token(args.name, args.expires_in, args.max_uses)
        print(f"created bootstrap token {token.token_id}", file=sys.stderr)
        print(token.text)
        return 0
    if args.token_command == "list":
        kind = None if args.kind == "all" else tokens.TokenKind(args.kind)
        rows = store.list_tokens(kind)
        now = time.time()
        if args.json:
            for row in rows:
                print(
                    json.dumps(
                        {
                            "id": row.token_id,
                            "kind": row.kind.value,
                            "agent_id": row.agent_id,
                            "name": row.name,
                            "created_at": row.created_at,
                            "revoked_at": row.revoked_at,
                            "last_used_at": row.last_used_at,
                            "expires_at": row.expires_at,
                            "uses": row.uses,
                            "max_uses": row.max_uses,
                            "state": _token_state(row, now),
                        }
                    )
                )
            return 0
        print(
            f"{'ID':16}  {'KIND':9}  {'STATE':8}  {'CREATED':20}  {'EXPIRES':20}  "
            f"{'USES':7}  {'LAST USED':20}  AGENT/NAME"
        )
        for row in rows:
            expires = "never" if row.expires_at is None else _ts(row.expires_at)
            if row.kind is tokens.TokenKind.AGENT:
                expires, uses = "-", "-"
            else:
                uses = _uses(row.uses, row.max_uses)
            print(
                f"{row.token_id:16}  {row.kind.value:9}  {_token_state(row, now):8}  "
                f"{_ts(row.created_at):20}  {expires:20}  {uses:7}  "
                f"{_ts(row.last_used_at):20}  {row.agent_id or row.name}"
            )
        return 0
    if not store.revoke_token(args.token_id):
        raise UserError(
            f"no active token with id {args.token_id}",
            hint="`sennet-controlplane token list` shows the ids",
        )
    print(f"revoked {args.token_id}")
    return 0


def _token_state(row: TokenRow, now: float) -> str:
    """What `token list` says: active, revoked, expired or used_up (the refusal's reason)."""
    refused = refusal(row, now)
    if refused is None:
        return "active"
    return {"revoked_token": "revoked", "expired_token": "expired", "token_used_up": "used_up"}.get(
        refused.reason, "disabled"
    )


def _agent_command(args: argparse.Namespace, db: Path) -> int:
    store = _identity(db)
    if args.agent_command == "list":
        rows = store.list_agents()
        if args.json:
            for row in rows:
                print(
                    json.dumps(
                        {
                            "agent_id": row.agent_id,
                            "hostname": row.hostname,
                            "state": row.state.value,
                            "reset_allowed": row.reset_allowed,
                            "registered_at": row.registered_at,
                            "last_heartbeat_at": row.last_heartbeat_at,
                            "active_tokens": row.active_tokens,
                        }
                    )
                )
            return 0
        print(f"{'AGENT':36}  {'STATE':8}  {'RESET':5}  {'TOKENS':6}  {'LAST HEARTBEAT':20}  HOST")
        for row in rows:
            reset = "yes" if row.reset_allowed else "no"
            print(
                f"{row.agent_id:36}  {row.state.value:8}  {reset:5}  "
                f"{row.active_tokens:<6}  {_ts(row.last_heartbeat_at):20}  {row.hostname}"
            )
        return 0
    if args.agent_command == "reset":
        store.reset_agent(args.agent_id)
        print(f"reset {args.agent_id}: its next enrolment with a bootstrap token is allowed, once")
    elif args.agent_command == "disable":
        revoked = store.disable_agent(args.agent_id)
        print(f"disabled {args.agent_id} ({revoked} token(s) revoked)")
    else:
        store.enable_agent(args.agent_id)
        print(f"enabled {args.agent_id}: it may enrol again with a bootstrap token, once")
    return 0


def _update_command(args: argparse.Namespace, db: Path) -> int:
    store = Store(db)
    store.migrate()
    now = time.time()
    if args.update_command == "publish":
        for agent in args.agent:
            validate.agent_id(agent, "--agent")
        offer = update_offers.publish(store, args.bundle, tuple(args.agent), args.apply_at, now)
        print(
            f"offer {offer.offer_id}: version {offer.version} sha256 {offer.sha256} "
            f"size {offer.size} apply_at {offer.apply_at} "
            f"agents {','.join(offer.targets) or 'all'}"
        )
        return 0
    if args.update_command == "list":
        for offer in update_offers.active(store.local()):
            doc = {
                "offer_id": offer.offer_id,
                "version": offer.version,
                "sha256": offer.sha256,
                "size": offer.size,
                "apply_at": offer.apply_at,
                "agents": list(offer.targets),
                "published_at": offer.published_at,
            }
            if args.json:
                print(json.dumps(doc))
            else:
                agents = ",".join(offer.targets) or "all"
                print(
                    f"{offer.offer_id:<6} {offer.version:16} {offer.sha256[:16]}  "
                    f"{offer.size:>12}  {offer.apply_at:11}  {_ts(offer.published_at):20}  {agents}"
                )
        return 0
    if not update_offers.withdraw(store, args.offer_id, now):
        raise UserError(
            f"no active offer with id {args.offer_id}",
            hint="`sennet-controlplane update list` shows the ids",
        )
    print(f"withdrew offer {args.offer_id}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the servers (gRPC, the HTTP stack) are what `serve` needs and nothing
    # else does; `token create` and the other one-shot commands start in a fraction of it.
    from sennet.controlplane.app import ControlPlane

    asyncio.run(ControlPlane(settings.build(args, os.environ)).run())
    return 0


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    common = settings.read(args, os.environ, settings.GLOBAL)
    slog.setup(common["log_level"])
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "agent":
            return _agent_command(args, common["db"])
        if args.command == "update":
            return _update_command(args, common["db"])
        return _token_command(args, common["db"])
    except sqlite3.DatabaseError as exc:
        raise UserError(
            f"cannot use database {common['db']}: {exc}",
            hint="if the file is damaged, restore it from a backup or point --db at another file",
        ) from exc


def main(argv: list[str] | None = None) -> int:
    """Entry point; operator mistakes exit 2 with one `sennet-controlplane: error:` line."""
    return run_main(PROG, lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())

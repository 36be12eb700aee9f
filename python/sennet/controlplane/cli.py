"""`sennet-controlplane`: serve, and manage bootstrap tokens.

    sennet-controlplane --db /var/lib/sennet/controlplane.db serve
    sennet-controlplane token create --name rack-12      # prints the token once
    sennet-controlplane token list
    sennet-controlplane token revoke 3f2a9c0d1e4b5a6f

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
import sqlite3
import sys
import time
from pathlib import Path

from sennet.common import log as slog
from sennet.common.errors import UserError, run_main
from sennet.controlplane import settings, tokens
from sennet.controlplane.app import ControlPlane
from sennet.controlplane.store import Store

PROG = "sennet-controlplane"


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
        description="Bootstrap tokens let agents enrol; each agent then gets its own "
        "token. Only hashes are stored: a token is shown once, when created.",
    )
    tsub = t.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    c = tsub.add_parser("create", help="create a bootstrap token and print it (once)")
    c.add_argument("--name", default="", help="a note for `token list`, e.g. the site or rack")
    ls = tsub.add_parser("list", help="list tokens (never their secrets)")
    ls.add_argument("--kind", choices=["bootstrap", "agent", "all"], default="all")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    r = tsub.add_parser("revoke", help="revoke a token by its id (bootstrap or agent)")
    r.add_argument("token_id", help="the id shown by `token list`")
    return p


def _ts(value: float | None) -> str:
    return "-" if value is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def _token_command(args: argparse.Namespace, db: Path) -> int:
    store = Store(db)
    store.migrate()
    if args.token_command == "create":
        token = store.create_bootstrap_token(args.name)
        print(f"created bootstrap token {token.token_id}", file=sys.stderr)
        print(token.text)
        return 0
    if args.token_command == "list":
        kind = None if args.kind == "all" else tokens.TokenKind(args.kind)
        rows = store.list_tokens(kind)
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
                        }
                    )
                )
            return 0
        print(f"{'ID':16}  {'KIND':9}  {'STATE':7}  {'CREATED':20}  {'LAST USED':20}  AGENT/NAME")
        for row in rows:
            state = "revoked" if row.revoked_at else "active"
            print(
                f"{row.token_id:16}  {row.kind.value:9}  {state:7}  {_ts(row.created_at):20}  "
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


def _serve(args: argparse.Namespace) -> int:
    asyncio.run(ControlPlane(settings.build(args, os.environ)).run())
    return 0


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    common = settings.read(args, os.environ, settings.GLOBAL)
    slog.setup(common["log_level"])
    try:
        if args.command == "serve":
            return _serve(args)
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

"""`sennet-controlplane`: serve, and manage bootstrap tokens.

    sennet-controlplane --db /var/lib/sennet/controlplane.db serve
    sennet-controlplane token create --name rack-12      # prints the token once
    sennet-controlplane token list
    sennet-controlplane token revoke 3f2a9c0d1e4b5a6f

Operator mistakes (bad flags, unreadable files, a busy port) print one
`sennet-controlplane: error:` line and exit 2 (`sennet.common.errors.run_main`);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from sennet.common import log as slog
from sennet.common.errors import UserError, run_main
from sennet.controlplane import tokens
from sennet.controlplane.app import ControlPlane, Settings
from sennet.controlplane.grpc_server import TlsFiles
from sennet.controlplane.store import Store

PROG = "sennet-controlplane"
DEFAULT_DB = Path(os.environ.get("SENNET_CONTROLPLANE_DB", "/var/lib/sennet/controlplane.db"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Sennet control plane: receives agent heartbeats over gRPC (and Connect "
        "JSON), stores them in SQLite and serves /health and Prometheus /metrics.",
    )
    p.add_argument(
        "--db",
        type=Path,
        default=DEFAULT_DB,
        help="SQLite database file (default: $SENNET_CONTROLPLANE_DB or %(default)s)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "serve",
        help="run the gRPC and HTTP servers",
        description="Run the control plane until SIGTERM or SIGINT.",
    )
    s.add_argument(
        "--grpc-listen",
        default="127.0.0.1:50051",
        metavar="HOST:PORT",
        help="gRPC address (port 0 picks a free one; default %(default)s)",
    )
    s.add_argument(
        "--http-listen",
        default="127.0.0.1:9469",
        metavar="HOST:PORT",
        help="HTTP address for /health, /metrics and Connect (default %(default)s)",
    )
    s.add_argument("--tls-cert", type=Path, help="PEM server certificate (enables TLS on gRPC)")
    s.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    s.add_argument(
        "--tls-client-ca",
        type=Path,
        help="PEM CA; when given, agents must present a client certificate it signed",
    )
    s.add_argument(
        "--retention-days",
        type=float,
        default=30.0,
        help="keep stored heartbeats and events this long (default %(default)s)",
    )
    s.add_argument(
        "--stale-after",
        type=float,
        default=35.0,
        metavar="SECONDS",
        help="sennet_agent_up drops to 0 after this long without a heartbeat (default %(default)s)",
    )
    s.add_argument(
        "--max-request-bytes",
        type=int,
        default=1 << 20,
        help="largest accepted request body (default %(default)s)",
    )
    s.add_argument(
        "--reuse-port",
        action="store_true",
        help="set SO_REUSEPORT on the gRPC port so several processes can share it "
        "(run one per core against the same --db)",
    )
    s.add_argument(
        "--fleet-refresh",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="reload every agent's state from the database this often, so /metrics includes "
        "heartbeats stored by other processes sharing the port (use with --reuse-port)",
    )
    s.add_argument(
        "--ready-file",
        type=Path,
        help="write {grpc_port, http_port, pid} as JSON here once serving",
    )

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


def _token_command(args: argparse.Namespace) -> int:
    store = Store(args.db)
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
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise UserError("--tls-cert and --tls-key go together")
        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
    elif args.tls_client_ca:
        raise UserError("--tls-client-ca needs --tls-cert and --tls-key")
    if args.retention_days <= 0:
        raise UserError(f"--retention-days must be positive, not {args.retention_days}")
    settings = Settings(
        db=args.db,
        grpc_listen=args.grpc_listen,
        http_listen=args.http_listen,
        tls=tls,
        retention_s=args.retention_days * 86400.0,
        stale_after_s=args.stale_after,
        max_request_bytes=args.max_request_bytes,
        reuse_port=args.reuse_port,
        ready_file=args.ready_file,
        fleet_refresh_s=args.fleet_refresh,
    )
    asyncio.run(ControlPlane(settings).run())
    return 0


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    slog.setup(args.log_level)
    if args.command == "serve":
        return _serve(args)
    return _token_command(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point; operator mistakes exit 2 with one `sennet-controlplane: error:` line."""
    return run_main(PROG, lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())

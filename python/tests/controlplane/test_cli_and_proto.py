"""The sennet-controlplane command line, and the committed bindings matching the .proto."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from sennet.proto import generate
from sennet.testing.controlplane import cli


def test_token_create_prints_the_token_once_and_list_never_shows_it(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    created = cli(db, "token", "create", "--name", "rack-12")
    assert created.returncode == 0
    token = created.stdout.strip()
    kind, token_id, secret = token.split(".")
    assert (kind, len(token_id), len(secret)) == ("sb", 16, 43)
    assert created.stderr == f"created bootstrap token {token_id}\n"
    listed = cli(db, "token", "list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["kind"], r["name"], r["revoked_at"]) for r in rows] == [
        (token_id, "bootstrap", "rack-12", None)
    ]
    table = cli(db, "token", "list").stdout
    assert token_id in table and "active" in table and secret not in table


def test_token_revoke_marks_it_revoked_and_a_second_revoke_is_an_error(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    token_id = cli(db, "token", "create").stdout.split(".")[1]
    assert cli(db, "token", "revoke", token_id).stdout == f"revoked {token_id}\n"
    again = cli(db, "token", "revoke", token_id)
    assert (again.returncode, again.stderr) == (
        2,
        f"sennet-controlplane: error: no active token with id {token_id}\n"
        "  hint: `sennet-controlplane token list` shows the ids\n",
    )
    rows = [json.loads(line) for line in cli(db, "token", "list", "--json").stdout.splitlines()]
    assert rows[0]["revoked_at"] is not None


def test_help_describes_every_subcommand() -> None:
    top = cli(Path("/nonexistent/x.db"), "--help").stdout
    assert "serve" in top and "token" in top and "--db" in top
    serve = cli(Path("/nonexistent/x.db"), "serve", "--help").stdout
    for flag in (
        "--grpc-listen",
        "--http-listen",
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "--retention-days",
        "--stale-after",
        "--reuse-port",
        "--fleet-refresh",
    ):
        assert flag in serve
    token = cli(Path("/nonexistent/x.db"), "token", "--help").stdout
    assert "create" in token and "list" in token and "revoke" in token


def test_an_unwritable_database_path_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = cli(blocker / "cp.db", "token", "list")
    assert result.returncode == 2
    assert (
        result.stderr.startswith("sennet-controlplane: error: ") and str(blocker) in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_the_committed_bindings_match_the_proto() -> None:
    assert generate.drifted() == []


def test_a_changed_proto_is_reported_as_drift(tmp_path: Path) -> None:
    root = tmp_path / "proto"
    shutil.copytree(generate.DEFAULT_PROTO_ROOT, root)
    proto = root / "sentinel/v1/sentinel.proto"
    proto.write_text(
        proto.read_text().replace(
            "message HeartbeatResponse {", "message HeartbeatResponse {\n  bool extra = 9;"
        )
    )
    assert generate.drifted(root) == ["sentinel/v1/sentinel_pb2.py", "sentinel/v1/sentinel_pb2.pyi"]


def test_a_busy_grpc_port_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = cli(
            tmp_path / "cp.db",
            "serve",
            "--grpc-listen",
            f"127.0.0.1:{port}",
            "--http-listen",
            "127.0.0.1:0",
        )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        f"sennet-controlplane: error: cannot listen for gRPC on 127.0.0.1:{port}"
    )
    assert "Traceback" not in result.stderr


def test_the_one_shot_commands_do_not_load_the_servers() -> None:
    """`token create` runs once per enrolment script and per test fixture: it must not pay for
    importing the gRPC and HTTP servers (about a second of a start under load) it never uses."""
    probe = (
        "import sys, sennet.controlplane.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('uvicorn', 'connectrpc') "
        "or m in ('sennet.controlplane.app', 'sennet.controlplane.grpc_server', "
        "'sennet.controlplane.http_server')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout == "[]\n", out.stdout

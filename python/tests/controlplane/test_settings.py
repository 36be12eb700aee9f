"""The control plane's settings table: defaults < SENNET_CONTROLPLANE_* < flags, clear errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sennet.common.errors import UserError
from sennet.controlplane import cli, settings
from sennet.testing.controlplane import COMMAND as CP


def build(argv: list[str], environ: dict[str, str]) -> settings.Settings:
    return settings.build(cli.parser().parse_args(argv), environ)


def run_cli(argv: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(settings.ENV_PREFIX)}
    return subprocess.run(
        [*CP, *argv], capture_output=True, text=True, check=False, timeout=30, env=env | environ
    )


def test_without_flags_or_variables_every_setting_has_its_declared_default() -> None:
    got = build(["serve"], {})
    assert got == settings.defaults()
    for s in settings.SETTINGS:
        assert getattr(got, s.name) == s.default
    assert (got.stale_after, got.agent_token_cache, got.max_request_bytes) == (35.0, 1.0, 1 << 20)


def test_an_environment_variable_overrides_the_default() -> None:
    got = build(
        ["serve"],
        {
            "SENNET_CONTROLPLANE_STALE_AFTER": "5",
            "SENNET_CONTROLPLANE_DB": "/srv/cp.db",
            "SENNET_CONTROLPLANE_REUSE_PORT": "yes",
            "SENNET_CONTROLPLANE_AGENT_TOKEN_CACHE": "0",
        },
    )
    assert (got.stale_after, got.db, got.reuse_port, got.agent_token_cache) == (
        5.0,
        Path("/srv/cp.db"),
        True,
        0.0,
    )


def test_a_flag_overrides_the_environment_variable() -> None:
    environ = {
        "SENNET_CONTROLPLANE_STALE_AFTER": "5",
        "SENNET_CONTROLPLANE_DB": "/srv/cp.db",
        "SENNET_CONTROLPLANE_REUSE_PORT": "true",
    }
    got = build(["--db", "/tmp/x.db", "serve", "--stale-after", "7", "--no-reuse-port"], environ)
    assert (got.stale_after, got.db, got.reuse_port) == (7.0, Path("/tmp/x.db"), False)


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (
            ["serve", "--stale-after", "soon"],
            {},
            "flag --stale-after (stale_after): expected a number of seconds > 0, got 'soon'",
        ),
        (
            ["serve"],
            {"SENNET_CONTROLPLANE_MAX_REQUEST_BYTES": "-1"},
            "environment SENNET_CONTROLPLANE_MAX_REQUEST_BYTES (max_request_bytes): "
            "expected a positive integer, got '-1'",
        ),
        (
            ["serve", "--grpc-listen", "localhost"],
            {},
            "flag --grpc-listen (grpc_listen): expected \"host:port\", got 'localhost'",
        ),
    ],
)
def test_a_bad_value_is_an_error_naming_its_source_key_and_what_was_expected(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(UserError) as err:
        build(argv, environ)
    assert err.value.message == message


def test_a_bad_value_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    result = run_cli(
        ["--db", str(tmp_path / "cp.db"), "serve"],
        {"SENNET_CONTROLPLANE_RETENTION_DAYS": "0"},
    )
    assert (result.returncode, result.stderr) == (
        2,
        "sennet-controlplane: error: environment SENNET_CONTROLPLANE_RETENTION_DAYS "
        "(retention_days): expected a number of days > 0, got '0'\n",
    )


def test_help_lists_every_setting_with_its_flag_variable_and_default() -> None:
    top = run_cli(["--help"], {}).stdout
    serve = " ".join(run_cli(["serve", "--help"], {}).stdout.split())  # undo line wrapping
    for s in settings.SETTINGS:
        text = top if s.scope == settings.GLOBAL else serve
        flat = " ".join(text.split())
        assert s.flag in flat and s.env in flat, s.name
        shown = "none" if s.default is None else str(s.default)
        assert f"[default: {shown}; env {s.env}]" in flat, s.name

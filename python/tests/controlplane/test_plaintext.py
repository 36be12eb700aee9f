"""Plaintext beyond loopback is refused unless the operator says --insecure-plaintext.

Bearer tokens ride in every call: a control plane listening on a network
address without TLS hands them to anyone on the path. Real process, real
ports: refused with one line and exit 2; with the flag it serves, and says so
in its log and in /metrics.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sennet.controlplane import settings
from sennet.controlplane.cli import parser
from sennet.testing.controlplane import cli, create_bootstrap_token, running
from sennet.testing.scrape import sample

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:1", True),
        ("127.3.4.5:1", True),
        ("[::1]:1", True),
        ("localhost:1", True),
        ("0.0.0.0:1", False),
        (":1", False),
        ("[::]:1", False),
        ("192.0.2.7:1", False),
        ("cp.example:1", False),
    ],
)
def test_only_loopback_addresses_count_as_loopback(listen: str, loopback: bool) -> None:
    assert settings.is_loopback(listen) is loopback


@pytest.mark.parametrize(
    ("flags", "exposed"),
    [
        (["--grpc-listen", "0.0.0.0:0"], "grpc 0.0.0.0:0"),
        (["--http-listen", "0.0.0.0:0"], "http 0.0.0.0:0"),
    ],
)
def test_plaintext_on_a_network_address_is_refused_in_one_line(
    tmp_path: Path, flags: list[str], exposed: str
) -> None:
    result = cli(tmp_path / "cp.db", "serve", *flags)
    assert result.returncode == 2
    first, *rest = result.stderr.splitlines()
    assert first == (
        f"sennet-controlplane: error: refusing plaintext on a non-loopback address: {exposed}"
    )
    assert len(rest) == 1 and rest[0].startswith("  hint: ")


def test_insecure_plaintext_serves_and_says_so_in_the_log_and_metrics(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path, ["--http-listen", "0.0.0.0:0", "--insecure-plaintext"]) as cp:
        cp.register(bootstrap)  # it works, over loopback as any address
        samples = cp.samples()
        assert sample(samples, "sennet_controlplane_plaintext_exposed", port="http") == 1
        assert sample(samples, "sennet_controlplane_plaintext_exposed", port="grpc") == 0
        assert cp.stop() == 0
    log = cp.log()
    assert "event=insecure_plaintext" in log and "port=http listen=0.0.0.0:0" in log


def test_the_default_loopback_ports_need_no_flag_and_report_nothing_exposed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cp.db"
    create_bootstrap_token(db)
    with running(db, tmp_path) as cp:
        samples = cp.samples()
        for port in ("grpc", "http"):
            assert sample(samples, "sennet_controlplane_plaintext_exposed", port=port) == 0
        assert cp.stop() == 0
    assert "event=insecure_plaintext" not in cp.log()


@pytest.mark.parametrize("listen", ["--grpc-listen", "--http-listen"])
def test_a_certificate_covers_both_ports_so_neither_counts_as_plaintext(listen: str) -> None:
    argv = ["serve", listen, "0.0.0.0:0", "--tls-cert", "s.pem", "--tls-key", "k.pem"]
    got = settings.build(parser().parse_args(argv), {})
    assert got.tls is not None and got.plaintext_exposed == []

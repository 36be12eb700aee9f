"""Provisioning read as data (rootfs/usr/lib/sennet/settings.sh), under busybox sh and dash.

Every hostile value tries to create a file; none may appear, and no event may echo a
value (values can be the bootstrap token, or the attack itself).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SETTINGS = Path(__file__).resolve().parent.parent / "rootfs/usr/lib/sennet/settings.sh"
SHELLS = [s for s in (["busybox", "sh"], ["dash"]) if shutil.which(s[0])]


@pytest.fixture(params=SHELLS, ids=[s[0] for s in SHELLS])
def shell(request: pytest.FixtureRequest) -> list[str]:
    return list(request.param)


def _run(shell: list[str], cwd: Path, call: str, stdin: str) -> tuple[list[str], list[str]]:
    res = subprocess.run(
        [*shell, "-c", f'. "$0" && {call}', str(SETTINGS)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    return res.stdout.splitlines(), res.stderr.splitlines()


HOSTILE_ENV = """\
# management NIC
SENNET_MGMT_IF=eth0
SENNET_IP="192.0.2.10/24"
SENNET_GW=$(touch pwned-subst)
SENNET_DNS=192.0.2.1;touch pwned-semicolon
SENNET_IP=`touch pwned-backtick`
touch pwned-bare-command
SENNET_CONTROL_PLANE=10.0.2.2:7443
SENNET_X$(touch pwned-key)=1
PATH=/tmp
SENNET_EARLY_ATTACH=off
SENNET_EARLY_ATTACH=$(touch pwned-early)
"""


def test_network_env_yields_only_checked_known_keys_and_runs_nothing(
    shell: list[str], tmp_path: Path
) -> None:
    out, events = _run(
        shell, tmp_path, "settings_from_env_file esp:sennet/network.env", HOSTILE_ENV
    )
    assert out == ["mgmt_if=eth0", "ip=192.0.2.10/24", "early_attach=off"]
    assert list(tmp_path.iterdir()) == []
    src = "sennet-init: event=provisioning_rejected source=esp:sennet/network.env"
    assert events == [
        f"{src} line=4 key=gw why=invalid_value",
        f"{src} line=5 key=dns why=invalid_value",
        f"{src} line=6 key=ip why=invalid_value",
        f"{src} line=7 key=(invalid) why=not_key_value",
        "sennet-init: event=provisioning_unknown_key source=esp:sennet/network.env line=8"
        " key=SENNET_CONTROL_PLANE",
        f"{src} line=9 key=(invalid) why=not_key_value",
        f"{src} line=10 key=(invalid) why=not_key_value",
        f"{src} line=12 key=early_attach why=invalid_value",
    ]


def test_cmdline_settings_are_checked_per_key_and_unknown_keys_reported(
    shell: list[str], tmp_path: Path
) -> None:
    cmdline = (
        "console=ttyS0,115200 quiet sennet.control_plane=10.0.2.2:7443"
        " sennet.bootstrap_token=Tok-3n_x.y~z sennet.log_level=$(touch${IFS}pwned)"
        " sennet.interval_s=;touch sennet.interfaces=eth1,eth2 sennet.reboot=now"
        " sennet.ip=dhcp sennet.novalue sennet.metrics_listen=127.0.0.1:9101\n"
    )
    out, events = _run(shell, tmp_path, "settings_from_cmdline", cmdline)
    assert out == [
        "control_plane=10.0.2.2:7443",
        "bootstrap_token=Tok-3n_x.y~z",
        "interfaces=eth1,eth2",
        "ip=dhcp",
        "metrics_listen=127.0.0.1:9101",
    ]
    assert list(tmp_path.iterdir()) == []
    assert events == [
        "sennet-init: event=provisioning_rejected source=cmdline key=log_level why=invalid_value",
        "sennet-init: event=provisioning_rejected source=cmdline key=interval_s why=invalid_value",
        "sennet-init: event=provisioning_unknown_key source=cmdline key=reboot",
        "sennet-init: event=provisioning_rejected source=cmdline key=(invalid) why=not_key_value",
    ]
    assert not any("Tok-3n" in e for e in events)


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("mgmt_if", "eth0", True),
        ("mgmt_if", "a-very-long-interface-name", False),
        ("ip", "10.0.0.5/24", True),
        ("ip", "10.0.0.5", False),
        ("gw", "10.0.0.1", True),
        ("dns", "10.0.0.1 8.8.8.8", False),
        ("control_plane", "10.0.2.2:7443", True),
        ("control_plane", "10.0.2.2:7443,10.0.2.3:7443", True),  # replicas, in order
        ("control_plane", "10.0.2.2:7443;reboot", False),
        ("metrics_listen", "127.0.0.1:9101,127.0.0.2:9101", False),
        ("tls_server_name", "cp.example.net", True),
        ("tls_server_name", "cp.example.net/../", False),
        ("otlp_endpoints", "grpc://10.0.2.2:4317,https://otel.example.net:4318/v1", True),
        ("otlp_endpoints", "10.0.2.2:4317", False),
        ("otlp_endpoints", "grpc://a:1;reboot", False),
        ("log_level", "debug", True),
        ("log_level", "loud", False),
        ("early_attach", "off", True),
        ("early_attach", "on", True),
        ("early_attach", "no", False),
        ("interval_s", "2.5", True),
        ("ssh_key", "ssh-ed25519:AAAAC3Nza+/=", True),
        ("slot", "b", True),
        ("slot", "c", False),
        ("version", "0.2.0", True),
        ("version", "0.2.0;reboot", False),
        ("image_digest", "ab" * 32, True),
        ("image_digest", "ab" * 31, False),
        ("image_digest", "AB" * 32, False),
        ("bootstrap_token", "a'b", False),
        ("bootstrap_token", "", False),
    ],
)
def test_each_key_accepts_only_its_own_shape(
    shell: list[str], tmp_path: Path, key: str, value: str, ok: bool
) -> None:
    res = subprocess.run(
        [*shell, "-c", '. "$0" && settings_check "$1" "$2"', str(SETTINGS), key, value],
        capture_output=True,
        check=False,
    )
    assert (res.returncode == 0) == ok


def test_the_last_accepted_value_wins(shell: list[str], tmp_path: Path) -> None:
    f = tmp_path / "settings"
    f.write_text("ip=dhcp\nmgmt_if=eth0\nip=10.0.0.5/24\n")
    out, _ = _run(shell, tmp_path, f'setting ip "{f}"', "")
    assert out == ["10.0.0.5/24"]

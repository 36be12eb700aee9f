"""Config errors read well: they name the file or source, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from sennet.agent import config
from sennet.agent.datapath import layout
from sennet.common.errors import UserError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def error_of(
    path: Path | None, env: dict[str, str] | None = None, flags: dict[str, object] | None = None
) -> str:
    with pytest.raises(UserError) as info:
        config.build(path, env or {}, flags or {})
    return str(info.value)


def test_a_valid_file_is_merged_over_defaults(tmp_path: Path) -> None:
    cfg = config.build(write(tmp_path, 'interfaces = ["eth1", "eth2"]\ninterval_s = 2\n'), {}, {})
    assert cfg.interfaces == ("eth1", "eth2")
    assert cfg.interval_s == 2.0
    assert cfg.loader == "libbpf"
    assert cfg.pin_dir == Path("/sys/fs/bpf/sennet")


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'interfaces = ["eth1"]\nlarge_packet_bytes = 1000\nloader = "bcc"\n')
    env = {
        "SENNET_LARGE_PACKET_BYTES": "1200",
        "SENNET_INTERFACES": "eth3,eth4",
        "SENNET_LOADER": "libbpf",
    }
    cfg = config.build(path, env, {"large_packet_bytes": 1300})
    assert (cfg.large_packet_bytes, cfg.interfaces, cfg.loader) == (
        1300,
        ("eth3", "eth4"),
        "libbpf",
    )


def test_unknown_key_names_file_key_and_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, 'interfaces = ["eth1"]\ninterval = 5\n')
    assert error_of(path) == f"{path}: unknown key 'interval'\n  hint: did you mean 'interval_s'?"


def test_wrong_type_names_file_key_and_expected_type(tmp_path: Path) -> None:
    path = write(tmp_path, 'interfaces = "eth1"\n')
    assert error_of(path) == f"{path}: key 'interfaces': expected a list of strings, got 'eth1'"
    path = write(tmp_path, 'interfaces = ["eth1"]\nlarge_packet_bytes = "big"\n')
    assert error_of(path) == f"{path}: key 'large_packet_bytes': expected an integer, got 'big'"
    path = write(tmp_path, 'interfaces = ["eth1"]\ndetach_on_exit = 1\n')
    assert error_of(path) == f"{path}: key 'detach_on_exit': expected true or false, got 1"


def test_out_of_range_value_names_key_and_the_allowed_range(tmp_path: Path) -> None:
    path = write(tmp_path, 'interfaces = ["eth1"]\nringbuf_bytes = 5000\n')
    assert error_of(path) == (
        f"{path}: key 'ringbuf_bytes': "
        "expected a power of two between 4096 and 1073741824, got 5000"
    )


def test_missing_interfaces_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "interval_s = 1\n")
    assert (
        error_of(path) == "interfaces (from default): expected at least one interface name, got []"
    )


def test_invalid_toml_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'interfaces = ["eth1"]\nloader = libbpf\n')
    assert error_of(path) == f"{path}: not valid TOML: Invalid value (at line 2, column 10)"


def test_missing_file_and_non_utf8_file_are_named(tmp_path: Path) -> None:
    assert (
        error_of(tmp_path / "nope.toml") == f"config file {tmp_path / 'nope.toml'} does not exist"
    )
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'interfaces = ["\xe9th0"]\n')
    assert error_of(bad).startswith(f"{bad}: not UTF-8 text")


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, 'interfaces = ["eth1"]\n')
    assert error_of(path, {"SENNET_INTERVAL_S": "soon"}) == (
        "environment SENNET_INTERVAL_S: expected a number, got 'soon'"
    )
    assert error_of(path, {"SENNET_DETACH_ON_EXIT": "maybe"}) == (
        "environment SENNET_DETACH_ON_EXIT: expected true or false, got 'maybe'"
    )


def test_token_without_control_plane_is_refused_and_secrets_are_redacted(tmp_path: Path) -> None:
    path = write(tmp_path, 'interfaces = ["eth1"]\nbootstrap_token = "s3cret"\n')
    assert error_of(path).startswith("bootstrap_token is set but control_plane is empty")
    path = write(
        tmp_path, 'interfaces = ["eth1"]\nbootstrap_token = "s3cret"\ncontrol_plane = "cp:50051"\n'
    )
    view = config.build(path, {}, {}).public_view()
    assert view["bootstrap_token"] == "<redacted>"
    assert "s3cret" not in repr(view)


def test_duplicate_interface_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'interfaces = ["eth1", "eth1"]\n')
    assert error_of(path) == "interfaces lists a name twice: ['eth1', 'eth1']"


def test_every_setting_has_a_flag_and_an_environment_variable() -> None:
    text = config.describe()
    for s in config.SETTINGS:
        assert f"SENNET_{s.name.upper()}" in text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SENNET_TLS_CERT": "c.pem", "SENNET_TLS_CA": "ca.pem"},
            "tls_cert and tls_key go together",
        ),
        (
            {"SENNET_TLS_KEY": "k.pem", "SENNET_TLS_CA": "ca.pem"},
            "tls_cert and tls_key go together",
        ),
        (
            {"SENNET_TLS_CERT": "c.pem", "SENNET_TLS_KEY": "k.pem"},
            "tls_cert is set but tls_ca is empty",
        ),
    ],
)
def test_a_client_certificate_needs_its_key_and_a_ca(env: dict[str, str], message: str) -> None:
    with pytest.raises(UserError) as info:
        config.build(None, {"SENNET_INTERFACES": "eth1", **env})
    assert info.value.message == message


def test_features_default_to_all_and_name_a_wrong_one(tmp_path: Path) -> None:
    cfg = config.build(write(tmp_path, 'interfaces = ["eth1"]\n'), {}, {})
    assert cfg.features == ("flows", "bursts", "tcp", "dns")
    assert layout.features_named(cfg.features) == layout.FEATURES_ALL
    cfg = config.build(None, {"SENNET_FEATURES": "flows,dns", "SENNET_INTERFACES": "eth1"}, {})
    assert layout.features_named(cfg.features) == layout.Feature.FLOWS | layout.Feature.DNS
    cfg = config.build(write(tmp_path, 'interfaces = ["eth1"]\nfeatures = []\n'), {}, {})
    assert layout.features_named(cfg.features) == layout.Feature(0)
    path = write(tmp_path, 'interfaces = ["eth1"]\nfeatures = ["flows", "burst"]\n')
    assert error_of(path) == (
        f"{path}: key 'features': expected names from flows, bursts, tcp, dns, not 'burst', "
        "got ['flows', 'burst']"
    )

"""OTLP settings live in the agent's one settings table: file, SENNET_* variables and flags,
validated at start, with errors that name the key and never echo a header's value."""

from __future__ import annotations

from pathlib import Path

import pytest

from sennet.agent import config
from sennet.agent.sinks.otlp.resource import resource_attributes
from sennet.agent.sinks.otlp.settings import from_config, parse_endpoint, parse_headers
from sennet.common.errors import UserError


def test_endpoints_headers_and_options_come_from_file_environment_and_flags(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'interfaces = ["eth1"]\n'
        'otlp_endpoints = ["grpcs://collector-a.example.net:4317", "https://b.test:4318/otlp/"]\n'
        'otlp_headers = "Authorization=Bearer abc,x-scope-orgid=tenant1"\n'
        "otlp_queue_bytes = 1048576\n"
    )
    cfg = config.build(path, {"SENNET_OTLP_FAILBACK": "false"}, {"otlp_timeout_s": 3.0})
    opts = from_config(cfg)
    a, b = opts.endpoints
    assert (a.protocol, a.tls, a.host, a.port) == ("grpc", True, "collector-a.example.net", 4317)
    assert (b.protocol, b.tls, b.host, b.port, b.base_path) == ("http", True, "b.test", 4318,
                                                                 "/otlp")  # fmt: skip
    assert opts.headers == (("authorization", "Bearer abc"), ("x-scope-orgid", "tenant1"))
    assert (opts.queue_bytes, opts.failback, opts.timeout_s, opts.gzip) == (1 << 20, False, 3.0,
                                                                             True)  # fmt: skip
    assert cfg.public_view()["otlp_headers"] == "<redacted>"
    assert "otlp_endpoints" in config.describe()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("tcp://c:4317", "scheme must be one of"),
        ("grpc://c", "host and port are required"),
        ("grpc://c:4317/v1", "an OTLP/gRPC endpoint has no path"),
        ("http://user:pw@c:4318", "credentials belong in otlp_headers"),
        ("http://c:99999", "port must be 1..65535"),
    ],
)
def test_a_bad_endpoint_is_refused_naming_the_setting(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_endpoint(text)
    with pytest.raises(UserError) as info:
        config.build(None, {"SENNET_INTERFACES": "eth1", "SENNET_OTLP_ENDPOINTS": text})
    assert "otlp_endpoints (from environment)" in str(info.value) and complaint in str(info.value)


def test_a_malformed_header_setting_is_refused_without_showing_its_value() -> None:
    secret = "Bearer-s3cret-value"
    with pytest.raises(ValueError):
        parse_headers(f"authorization:{secret}")
    with pytest.raises(UserError) as info:
        config.build(
            None, {"SENNET_INTERFACES": "eth1", "SENNET_OTLP_HEADERS": f"authorization:{secret}"}
        )
    assert "otlp_headers" in str(info.value) and secret not in str(info.value)


def test_a_client_certificate_for_otlp_needs_its_key() -> None:
    with pytest.raises(UserError) as info:
        config.build(None, {"SENNET_INTERFACES": "eth1", "SENNET_OTLP_TLS_CERT": "c.pem"})
    assert info.value.message == "otlp_tls_cert and otlp_tls_key go together"


def test_the_resource_names_the_image_only_on_the_appliance(tmp_path: Path) -> None:
    appliance = tmp_path / "os-release"
    appliance.write_text(
        'NAME="Sennet appliance"\nID=sennet\nVERSION_ID=0.1\nBUILD_ID=sha256:abc\n'
        'PRETTY_NAME="Sennet appliance 0.1 (Debian 12 based)"\n'
    )
    attrs = dict(resource_attributes("id-1", "0.1.0", appliance))
    assert attrs["sennet.image.version"] == "0.1"
    assert attrs["sennet.image.digest"] == "sha256:abc"
    assert attrs["os.description"] == "Sennet appliance 0.1 (Debian 12 based)"
    host = tmp_path / "host-os-release"
    host.write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12"\n')
    attrs = dict(resource_attributes("id-1", "0.1.0", host))
    assert not [k for k in attrs if k.startswith("sennet.image.")]
    assert (attrs["host.id"], attrs["service.name"]) == ("id-1", "sennet-agent")
    assert dict(resource_attributes("id-1", "0.1.0", tmp_path / "absent"))["os.type"] == "linux"

"""Fetching pinned inputs: verified by sha256, a tampered file stops the build naming it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sennet.common.errors import UserError
from sennet_image.fetch import fetch
from sennet_image.lock import WheelPin


def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes) -> Path:
    served = tmp_path / "served"
    served.mkdir()
    (served / "demo-1.0-py3-none-any.whl").write_bytes(content)
    monkeypatch.setenv("SENNET_WHEEL_BASE", served.as_uri())
    monkeypatch.setattr("sennet_image.mirrors.pip_locations", lambda: [])
    return tmp_path / "cache"


def test_fetch_returns_a_verified_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _setup(tmp_path, monkeypatch, b"genuine")
    pin = WheelPin(
        "demo", "1.0", "demo-1.0-py3-none-any.whl", hashlib.sha256(b"genuine").hexdigest()
    )
    assert fetch(pin, cache).read_bytes() == b"genuine"


def test_tampered_input_fails_naming_the_input_and_both_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _setup(tmp_path, monkeypatch, b"tampered")
    want = hashlib.sha256(b"genuine").hexdigest()
    pin = WheelPin("demo", "1.0", "demo-1.0-py3-none-any.whl", want)
    with pytest.raises(UserError) as err:
        fetch(pin, cache)
    assert "input demo 1.0 (demo-1.0-py3-none-any.whl)" in str(err.value)
    assert hashlib.sha256(b"tampered").hexdigest() in str(err.value) and want in str(err.value)
    assert not (cache / want / "demo-1.0-py3-none-any.whl").exists()

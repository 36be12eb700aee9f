"""Fixtures for the updater's host tests: real openssl keys, a file-backed device per test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from sennet.update.device import Device
from tests.update.bundles import fake_device, make_key


@dataclass(frozen=True)
class Keys:
    good: Path  # private key whose public half is in the device keyring
    rotated: Path  # a second key in the keyring (rotation window)
    stranger: Path  # a valid key the device does not know
    keyring: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    base = tmp_path_factory.mktemp("keys")
    keyring = base / "keyring"
    keyring.mkdir()
    good, good_pub = make_key(base / "private", "good")
    rotated, rotated_pub = make_key(base / "private", "rotated")
    stranger, _ = make_key(base / "private", "stranger")
    for pub in (good_pub, rotated_pub):
        (keyring / pub.name).write_bytes(pub.read_bytes())
    return Keys(good, rotated, stranger, keyring)


@pytest.fixture
def device(tmp_path: Path, keys: Keys) -> Device:
    return fake_device(tmp_path / "device", keys.keyring)

"""The update keyring baked into the root: the development key by default, a site's on request."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sennet.common.errors import UserError
from sennet_image import keyring


def _keypair(d: Path, name: str, algorithm: str = "ed25519") -> tuple[Path, Path]:
    key, pem = d / f"{name}.key", d / f"{name}.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", algorithm, "-out", str(key)],
        check=True,
        capture_output=True,
    )
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pem)], check=True)
    return key, pem


def test_the_default_keyring_is_the_development_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SENNET_UPDATE_KEYRING", raising=False)
    assert keyring.install(tmp_path) == ["update.pem"]
    baked = tmp_path / "usr/share/sennet/update-keys/update.pem"
    assert baked.read_bytes() == (keyring.DEV_KEYRING / "update.pem").read_bytes()
    assert baked.stat().st_mode & 0o777 == 0o644


def test_a_site_keyring_with_two_keys_is_a_rotation_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring, keys = tmp_path / "ring", tmp_path / "keys"
    ring.mkdir()
    keys.mkdir()
    for name in ("2026-old", "2027-new"):
        _, pem = _keypair(keys, name)
        (ring / pem.name).write_bytes(pem.read_bytes())
    monkeypatch.setenv("SENNET_UPDATE_KEYRING", str(ring))
    root = tmp_path / "root"
    assert keyring.install(root) == ["2026-old.pem", "2027-new.pem"]
    assert sorted(p.name for p in (root / keyring.KEYRING_DIR).iterdir()) == [
        "2026-old.pem",
        "2027-new.pem",
    ]


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("private", "a private key; the keyring takes public keys only"),
        ("rsa", "not an Ed25519 public key (PEM)"),
        ("junk", "not an Ed25519 public key (PEM)"),
    ],
)
def test_a_keyring_entry_that_is_not_an_ed25519_public_key_stops_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str, message: str
) -> None:
    ring = tmp_path / "ring"
    ring.mkdir()
    if what == "private":
        key, _ = _keypair(tmp_path, "k")
        (ring / "k.pem").write_bytes(key.read_bytes())
    elif what == "rsa":
        _, pem = _keypair(tmp_path, "k", "rsa")
        (ring / "k.pem").write_bytes(pem.read_bytes())
    else:
        (ring / "k.pem").write_text("not a key\n")
    monkeypatch.setenv("SENNET_UPDATE_KEYRING", str(ring))
    with pytest.raises(UserError) as e:
        keyring.install(tmp_path / "root")
    assert e.value.message == f"{ring / 'k.pem'}: {message}"


def test_an_empty_or_missing_keyring_directory_stops_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENNET_UPDATE_KEYRING", str(tmp_path))
    with pytest.raises(UserError, match=r"no \*\.pem public key in it"):
        keyring.sources()
    monkeypatch.setenv("SENNET_UPDATE_KEYRING", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="not a directory"):
        keyring.sources()

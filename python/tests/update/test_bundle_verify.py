"""Bundle verification: every refusal reason, each before a byte is written."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from sennet.update import bundle
from sennet.update.errors import Refused
from sennet.update.manifest import IMAGES, MAX_MANIFEST_BYTES
from tests.update.bundles import COMPATIBLE, Images, make_bundle, manifest, sign, write_tar
from tests.update.conftest import Keys


def policy(keys: Keys, running: str = "0.1.0", minimum: str = "0.0.0") -> bundle.Policy:
    return bundle.Policy(COMPATIBLE, running, minimum, keys.keyring)


def refusal(path: Path, pol: bundle.Policy) -> tuple[str, str]:
    with pytest.raises(Refused) as info:
        bundle.verify(path, pol)
    return info.value.reason, info.value.detail


def test_right_key_verifies_and_lists_every_member(tmp_path: Path, keys: Keys) -> None:
    path = make_bundle(tmp_path / "b.bundle", keys.good)
    v = bundle.verify(path, policy(keys))
    try:
        assert v.key.name == "good.pem"
        assert v.manifest.version == "0.2.0"
        assert list(v.members) == list(bundle.MEMBERS)
        assert b"".join(v.chunks("root")) == Images().content("root")
    finally:
        v.close()


def test_second_key_of_the_keyring_verifies_too(tmp_path: Path, keys: Keys) -> None:
    v = bundle.verify(make_bundle(tmp_path / "b.bundle", keys.rotated), policy(keys))
    v.close()
    assert v.key.name == "rotated.pem"


def test_wrong_key_is_refused(tmp_path: Path, keys: Keys) -> None:
    reason, detail = refusal(make_bundle(tmp_path / "b.bundle", keys.stranger), policy(keys))
    assert reason == "signature"
    assert detail == "manifest.sig verifies with no key in the keyring (good.pem,rotated.pem)"


def test_tampered_manifest_is_refused(tmp_path: Path, keys: Keys) -> None:
    images = Images()
    signed = json.dumps(manifest(images), sort_keys=True).encode()
    sig = sign(keys.good, signed, tmp_path)
    tampered = signed.replace(b'"min_from_version": "0.1.0"', b'"min_from_version": "0.0.1"')
    assert tampered != signed and len(tampered) == len(signed)
    members = [("manifest.json", tampered), ("manifest.sig", sig)]
    members += [(n, images.content(k)) for k, n in IMAGES.items()]
    reason, _ = refusal(write_tar(tmp_path / "b.bundle", members), policy(keys))
    assert reason == "signature"


def test_tampered_image_is_refused(tmp_path: Path, keys: Keys) -> None:
    data = bytearray(Images().content("root"))
    data[123_456] ^= 0x01
    path = make_bundle(tmp_path / "b.bundle", keys.good, member_data={"root.img": bytes(data)})
    reason, detail = refusal(path, policy(keys))
    assert reason == "digest"
    assert detail.startswith("root.img sha256 ")


def test_image_of_another_size_is_refused(tmp_path: Path, keys: Keys) -> None:
    path = make_bundle(tmp_path / "b.bundle", keys.good, member_data={"agent.img": b"short"})
    assert refusal(path, policy(keys)) == ("digest", "agent.img is 5 bytes, manifest says 300011")


@pytest.mark.parametrize("where", ["in_header", "in_manifest", "in_root", "in_agent", "no_end"])
def test_truncated_bundle_is_refused(tmp_path: Path, keys: Keys, where: str) -> None:
    full = make_bundle(tmp_path / "full.bundle", keys.good).read_bytes()
    with tarfile.open(tmp_path / "full.bundle") as tar:
        agent = tar.getmember("agent.img")
    keep = {
        "in_header": 100,
        "in_manifest": 700,
        "in_root": 600_000,
        "in_agent": agent.offset_data + agent.size - 10,
        # every member whole, the two zero blocks that end a tar missing
        "no_end": -(-(agent.offset_data + agent.size) // 512) * 512,
    }[where]
    cut = tmp_path / "cut.bundle"
    cut.write_bytes(full[:keep])
    reason, _ = refusal(cut, policy(keys))
    assert reason == "truncated"


def test_other_appliance_is_incompatible(tmp_path: Path, keys: Keys) -> None:
    other = "sennet-appliance/x86_64/production"
    path = make_bundle(tmp_path / "b.bundle", keys.good, compatible=other)
    assert refusal(path, policy(keys)) == (
        "incompatible",
        f"bundle is for {other}, this is {COMPATIBLE}",
    )


def test_running_version_below_min_from_is_incompatible(tmp_path: Path, keys: Keys) -> None:
    path = make_bundle(tmp_path / "b.bundle", keys.good, min_from_version="0.1.5")
    reason, detail = refusal(path, policy(keys, running="0.1.0"))
    assert (reason, detail) == ("incompatible", "bundle 0.2.0 needs at least 0.1.5, running 0.1.0")


def test_below_the_configured_minimum_is_a_downgrade(tmp_path: Path, keys: Keys) -> None:
    path = make_bundle(tmp_path / "b.bundle", keys.good, images=Images(version="0.1.2"))
    assert refusal(path, policy(keys, running="0.1.0", minimum="0.1.10")) == (
        "downgrade",
        "bundle 0.1.2 is below update_min_version 0.1.10",
    )


def test_older_than_the_running_version_is_a_downgrade(tmp_path: Path, keys: Keys) -> None:
    """Above the floor but older than what runs: systemd-boot would never try it first."""
    path = make_bundle(tmp_path / "b.bundle", keys.good, images=Images(version="0.1.5"))
    assert refusal(path, policy(keys, running="0.2.0")) == (
        "downgrade",
        "bundle 0.1.5 is older than the running 0.2.0",
    )


def test_the_running_version_is_refused(tmp_path: Path, keys: Keys) -> None:
    path = make_bundle(tmp_path / "b.bundle", keys.good)
    assert refusal(path, policy(keys, running="0.2.0"))[0] == "same_version"


def test_empty_keyring_trusts_nothing(tmp_path: Path, keys: Keys) -> None:
    path = make_bundle(tmp_path / "b.bundle", keys.good)
    empty = tmp_path / "empty"
    empty.mkdir()
    pol = bundle.Policy(COMPATIBLE, "0.1.0", "0.0.0", empty)
    assert refusal(path, pol) == ("no_keys", f"no *.pem public key in {empty}")


def test_members_out_of_order_are_malformed(tmp_path: Path, keys: Keys) -> None:
    images = Images()
    raw = json.dumps(manifest(images), sort_keys=True).encode()
    sig = sign(keys.good, raw, tmp_path)
    members = [("manifest.sig", sig), ("manifest.json", raw)]
    members += [(n, images.content(k)) for k, n in IMAGES.items()]
    reason, _ = refusal(write_tar(tmp_path / "b.bundle", members), policy(keys))
    assert reason == "malformed"


def test_not_a_tar_is_refused(tmp_path: Path, keys: Keys) -> None:
    path = tmp_path / "junk.bundle"
    path.write_bytes(b"\x7fELF" + bytes(4096))
    assert refusal(path, policy(keys))[0] == "malformed"


def test_an_oversized_manifest_is_refused_before_it_is_read(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = Images()
    huge = b" " * (MAX_MANIFEST_BYTES + 1)  # JSON whitespace: harmless if it were read
    members = [("manifest.json", huge), ("manifest.sig", bytes(64))]
    members += [(n, images.content(k)) for k, n in IMAGES.items()]
    path = write_tar(tmp_path / "b.bundle", members)
    read: list[int] = []
    real_read_range = bundle.read_range

    def counting(f: BinaryIO, offset: int, size: int) -> Iterator[bytes]:
        read.append(size)
        return real_read_range(f, offset, size)

    monkeypatch.setattr(bundle, "read_range", counting)
    reason, detail = refusal(path, policy(keys))
    assert (reason, detail) == ("malformed", f"manifest.json is {len(huge)} bytes, too large")
    assert len(huge) not in read  # refused from the tar header's size, not after reading it

"""Slot identity and boot-entry naming: what systemd-boot boots given the ESP's file names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sennet.common.errors import UserError
from sennet_image import slots


def test_image_digest_is_the_contract_text_hashed(tmp_path: Path) -> None:
    root, agent = tmp_path / "root.squashfs", tmp_path / "agent.squashfs"
    root.write_bytes(b"root")
    agent.write_bytes(b"agent")
    text = (
        "sennet-slot/1\n"
        f"root {hashlib.sha256(b'root').hexdigest()}\n"
        f"agent {hashlib.sha256(b'agent').hexdigest()}\n"
    )
    assert slots.image_digest(root, agent) == hashlib.sha256(text.encode()).hexdigest()


def test_version_comes_from_the_environment_or_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sennet import __version__

    monkeypatch.delenv("SENNET_IMAGE_VERSION", raising=False)
    assert slots.image_version() == __version__
    monkeypatch.setenv("SENNET_IMAGE_VERSION", "0.2.0")
    assert slots.image_version() == "0.2.0"
    monkeypatch.setenv("SENNET_IMAGE_VERSION", "0.2.0+local")
    with pytest.raises(UserError, match=r"SENNET_IMAGE_VERSION: '0\.2\.0\+local' is not a version"):
        slots.image_version()


def test_each_slot_cmdline_names_slot_version_and_digest() -> None:
    ident = slots.Identity("0.2.0", "ab" * 32)
    assert ident.cmdline("console=ttyS0", "b") == (
        f"console=ttyS0 sennet.slot=b sennet.version=0.2.0 sennet.image_digest={'ab' * 32}"
    )
    with pytest.raises(UserError, match="unknown slot 'c'"):
        ident.cmdline("console=ttyS0", "c")


def test_entry_names_round_trip() -> None:
    assert slots.entry_name("a", "0.1.0") == "sennet-a-0.1.0.efi"
    assert slots.entry_name("b", "0.2.0", left=3) == "sennet-b-0.2.0+3-0.efi"
    assert slots.parse_entry("sennet-b-0.2.0+1-2.efi") == slots.Entry("b", "0.2.0", 1, 2)
    assert slots.parse_entry("sennet-a-0.1.0.efi") == slots.Entry("a", "0.1.0", None, 0)
    assert slots.parse_entry("SENNET-A-0.1.0+2.EFI") == slots.Entry("a", "0.1.0", 2, 0)
    assert slots.parse_entry("systemd-bootx64.efi") is None


def test_a_trial_boots_first_a_bad_one_never_the_newest_committed_otherwise() -> None:
    committed_a = slots.entry_name("a", "0.1.0")
    # an update put 0.2.0 in slot b on trial: it boots first, while it has tries left
    for left, done in ((3, 0), (2, 1), (1, 2)):
        trial = slots.entry_name("b", "0.2.0", left, done)
        assert slots.boot_order([committed_a, trial])[0] == trial
    # out of tries: slot a again, by itself
    bad = slots.entry_name("b", "0.2.0", 0, 3)
    assert slots.boot_order([bad, committed_a]) == [committed_a, bad]
    # both committed: the newest version, whichever slot holds it
    assert slots.boot_order(["sennet-b-0.2.0.efi", committed_a])[0] == "sennet-b-0.2.0.efi"
    assert slots.boot_order(["sennet-b-0.2.0.efi", "sennet-a-0.10.0.efi"])[0] == (
        "sennet-a-0.10.0.efi"
    )
    # the next update goes to slot a: it is the trial now
    trial_a = slots.entry_name("a", "0.3.0", 3)
    assert slots.boot_order(["sennet-b-0.2.0.efi", trial_a])[0] == trial_a
    # foreign files in \EFI\Linux are not ours to order
    assert slots.boot_order(["other.efi", committed_a]) == [committed_a]

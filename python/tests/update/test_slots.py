"""Finding the slots: the initramfs's list first, GPT partition names in sysfs second."""

from __future__ import annotations

from pathlib import Path

from sennet.update import slots


def test_the_initramfs_list_wins(tmp_path: Path) -> None:
    table = tmp_path / "partitions"
    table.write_text(
        "esp=/dev/vda1\nstate=/dev/vda7\nslot=a\nroot_b=/dev/vda4\nagent_b=/dev/vda5\n"
    )
    assert slots.device("root-b", table, tmp_path / "none") == Path("/dev/vda4")
    assert slots.device("agent-b", table, tmp_path / "none") == Path("/dev/vda5")
    assert slots.device("root-a", table, tmp_path / "none") is None


def test_sysfs_partition_names_are_the_fallback(tmp_path: Path) -> None:
    block = tmp_path / "block"
    for dev, name in (("vda3", "root-a"), ("vda4", "root-b")):
        (block / dev).mkdir(parents=True)
        (block / dev / "uevent").write_text(
            f"MAJOR=254\nDEVNAME={dev}\nDEVTYPE=partition\nPARTNAME={name}\n"
        )
    assert slots.device("root-b", tmp_path / "no-list", block) == Path("/dev/vda4")


def test_booted_identity_from_image_env_then_cmdline(tmp_path: Path) -> None:
    env, cmdline = tmp_path / "image.env", tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 sennet.slot=b sennet.version=0.2.0 sennet.image_digest=ab\n")
    assert slots.booted(env, cmdline, "0.1.0") == slots.Booted("b", "0.2.0", "ab")
    env.write_text("SENNET_SLOT=a\nSENNET_IMAGE_VERSION=0.3.0\nSENNET_IMAGE_DIGEST=cd\n")
    assert slots.booted(env, cmdline, "0.1.0") == slots.Booted("a", "0.3.0", "cd")
    env.unlink()
    cmdline.write_text("console=ttyS0 sennet.slot=zz\n")  # direct boot without identity
    assert slots.booted(env, cmdline, "0.1.0") == slots.Booted("a", "0.1.0", "")

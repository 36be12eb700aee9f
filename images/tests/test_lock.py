"""Lock files and the generated Bazel rules: pinned by hash, never naming a host."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sennet.common.errors import UserError
from sennet_image import lock
from sennet_image.lock import DebPin, WheelPin

DEB = DebPin(
    name="libbpf1",
    version="1:1.1.2-0+deb12u1",
    arch="amd64",
    archive="debian",
    path="pool/main/libb/libbpf/libbpf1_1.1.2-0+deb12u1_amd64.deb",
    sha256="ab" * 32,
    size=145032,
    set="root",
)
KERNEL = DebPin(
    name="linux-image-6.1.0-99-amd64",
    version="6.1.999-1",
    arch="amd64",
    archive="debian",
    path="pool/main/l/linux-signed-amd64/linux-image-6.1.0-99-amd64_6.1.999-1_amd64.deb",
    sha256="ef" * 32,
    size=1,
    set="kernel",
)
BUSYBOX = DebPin(
    name="busybox-static",
    version="1:1.35.0-4+b3",
    arch="amd64",
    archive="debian",
    path="pool/main/b/busybox/busybox-static_1.35.0-4+b3_amd64.deb",
    sha256="12" * 32,
    size=1,
    set="root",
)
WHEEL = WheelPin(
    name="numpy", version="2.4.6", filename="numpy-2.4.6-cp311-x.whl", sha256="cd" * 32
)


def test_deps_bzl_declares_one_repository_per_input_with_its_sha256() -> None:
    text = lock.render_deps_bzl([DEB, BUSYBOX, KERNEL], [WHEEL])
    assert 'sennet_input(name = "deb_libbpf1", kind = "deb", archive = "debian", ' in text
    assert f'sha256 = "{"ab" * 32}"' in text
    assert f'sha256 = "{"cd" * 32}"' in text
    assert 'DEBS_ROOT = [\n    "@deb_libbpf1//file",\n    "@deb_busybox_static//file",\n]' in text
    assert '"libbpf1": "@deb_libbpf1//file",' in text


def test_deps_bzl_names_the_kernel_and_busybox_chosen_from_the_lock() -> None:
    text = lock.render_deps_bzl([DEB, BUSYBOX, KERNEL], [WHEEL])
    assert 'KERNEL_DEB = "@deb_linux_image_6_1_0_99_amd64//file"' in text
    assert 'BUSYBOX_DEB = "@deb_busybox_static//file"' in text


def test_a_lock_without_one_kernel_stops_naming_the_problem() -> None:
    with pytest.raises(UserError, match="one kernel package, not 0"):
        lock.render_deps_bzl([DEB, BUSYBOX], [WHEEL])


def test_committed_locks_and_rules_name_no_registry_host() -> None:
    for path in (lock.DEBIAN_LOCK, lock.WHEELS_LOCK, lock.DEPS_BZL):
        assert not re.search(r"https?://|\.org\b|\.com\b|\.net\b", path.read_text()), path


def test_committed_deps_bzl_matches_the_locks() -> None:
    rendered = lock.render_deps_bzl(lock.load_debs(), lock.load_wheels())
    assert lock.DEPS_BZL.read_text() == rendered


def test_every_committed_pin_has_a_sha256() -> None:
    pins: list[DebPin | WheelPin] = [*lock.load_debs(), *lock.load_wheels()]
    for pin in pins:
        assert re.fullmatch(r"[0-9a-f]{64}", pin.sha256), pin.name


def test_lock_round_trips_through_save_and_load(tmp_path: Path) -> None:
    lock.save_debs([DEB], tmp_path / "d.json")
    assert lock.load_debs(tmp_path / "d.json") == [DEB]


def test_a_malformed_lock_entry_stops_naming_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps({"packages": [{"name": "libfoo", "version": "1"}]}))
    with pytest.raises(UserError, match="bad entry libfoo"):
        lock.load_debs(bad)

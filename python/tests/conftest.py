"""Shared fixtures: root check, private bpffs, test-owned veth pairs in namespaces."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sennet.testing.netlab import VethPair, bpffs, veth_pair

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root() -> None:
    """Kernel tests need root; say so plainly instead of failing deep inside a syscall."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (BPF, TC, network namespaces): run the suite as root")


@pytest.fixture
def pin_root(root: None, tmp_path: Path) -> Iterator[Path]:
    with bpffs(tmp_path) as path:
        yield path


@pytest.fixture
def net(root: None) -> Iterator[VethPair]:
    with veth_pair() as pair:
        yield pair

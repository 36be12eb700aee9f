"""Shared fixtures: root check, private bpffs, test-owned veth pairs in namespaces, and a real
control plane per module (`shared`, read-mostly tests) or per test (`fresh`, restarts, faults).

The agent's sink tests and the control plane's own tests use the same two fixtures, so both
run against exactly the process an operator runs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sennet.testing.controlplane import Served, create_bootstrap_token, running
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


@pytest.fixture
def world_traversable() -> Iterator[Path]:
    """A fresh directory any user can reach, for a process that gives up root (pytest's own
    temporary tree is root-only, so a dropped process could not get to its files there)."""
    path = Path(tempfile.mkdtemp(prefix="sennet-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One control plane for a whole module; tests must use their own agent ids."""
    workdir = tmp_path_factory.mktemp("cp")
    db = workdir / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, workdir) as cp:
        yield Served(cp, bootstrap)
        assert cp.stop() == 0, cp.log()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Served]:
    """A control plane of this test's own (restart, fault and counting tests)."""
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    with running(db, tmp_path) as cp:
        yield Served(cp, bootstrap)
        assert cp.stop() == 0, cp.log()

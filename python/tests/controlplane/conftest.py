"""Fixtures: a control plane process per module (read-mostly tests) or per test (restarts)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sennet.testing.controlplane import ControlPlane, create_bootstrap_token, running


@dataclass(frozen=True)
class Served:
    cp: ControlPlane
    bootstrap: str


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

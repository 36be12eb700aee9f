"""One loaded data plane per fuzz module: loading costs a verifier run, a frame costs
microseconds, so every generated frame of a module goes through the same programs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sennet.agent.config import DEFAULT_ASSETS
from sennet.agent.datapath import libbpf_loader
from sennet.agent.datapath.loader_types import DatapathOptions, LoadedDatapath
from sennet.testing.netlab import bpffs

RING = 1 << 20  # room for every event a module's frames raise


@pytest.fixture(scope="module")
def datapath(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedDatapath]:
    with bpffs(tmp_path_factory.mktemp("pins")) as pins:
        pin_dir = pins / "fuzz"
        pin_dir.mkdir()
        loaded = libbpf_loader.load(DatapathOptions(DEFAULT_ASSETS, pin_dir, RING, 1000))
        try:
            yield loaded
        finally:
            loaded.close()

"""HANDSHAKES is sized at load time (tcp_handshakes_max), by both loaders, and a pinned
table of another size is refused by name rather than silently reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from sennet.agent.config import DEFAULT_ASSETS
from sennet.agent.datapath import bcc_loader, layout, libbpf_loader
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.loader_types import DatapathOptions
from sennet.common.errors import UserError
from tests.datapath_harness import LOADERS

pytestmark = pytest.mark.kernel

LOAD = {"libbpf": libbpf_loader.load, "bcc": bcc_loader.load}


@pytest.mark.parametrize("loader", LOADERS)
def test_the_handshake_table_has_the_size_asked_for_at_load(pin_root: Path, loader: str) -> None:
    opts = DatapathOptions(DEFAULT_ASSETS, pin_root / "p", 1 << 16, 1000, tcp_handshakes=4096)
    (pin_root / "p").mkdir()
    loaded = LOAD[loader](opts)
    try:
        info = libbpf().map_info(loaded.map_fds[layout.MAP_HANDSHAKES])
    finally:
        loaded.close()
    assert (info.type, info.max_entries) == (layout.BPF_MAP_TYPE_LRU_HASH, 4096)
    assert (info.key_size, info.value_size) == (
        layout.HS_KEY.itemsize,
        layout.HS.itemsize,
    )


def test_a_pinned_table_of_another_size_is_refused_by_name(pin_root: Path) -> None:
    pin_dir = pin_root / "p"
    pin_dir.mkdir()
    first = DatapathOptions(DEFAULT_ASSETS, pin_dir, 1 << 16, 1000, tcp_handshakes=4096)
    libbpf_loader.load(first).close()  # pinned, and kept
    again = DatapathOptions(DEFAULT_ASSETS, pin_dir, 1 << 16, 1000, tcp_handshakes=8192)
    with pytest.raises(UserError, match="HANDSHAKES has max_entries 4096, this build expects 8192"):
        libbpf_loader.load(again)
    libbpf_loader.load(first).close()  # the same size is reused

"""Handshake expiry on a real HANDSHAKES map, filled by the test with entries of known age.

The test writes the entries itself (time of the SYN, SYN/ACK or not), so which
ones the agent must expire, and how many of those count as unanswered, follows
from what it wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sennet.agent.config import DEFAULT_ASSETS
from sennet.agent.datapath import layout, libbpf_loader
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.loader_types import DatapathOptions, LoadedDatapath
from sennet.agent.tcp_handshakes import Expired, delete_all, read_all
from sennet.agent.tcp_health import TcpHealthReader

pytestmark = pytest.mark.kernel

S = 1_000_000_000
NOW = 1_000 * S  # a CLOCK_MONOTONIC reading, passed in so ages are exact


@pytest.fixture
def datapath(pin_root: Path) -> Iterator[LoadedDatapath]:
    pin_dir = pin_root / "p"
    pin_dir.mkdir()
    loaded = libbpf_loader.load(DatapathOptions(DEFAULT_ASSETS, pin_dir, 1 << 16, 1000))
    try:
        yield loaded
    finally:
        loaded.close()


def fill(fd: int, first: int, count: int, syn_ns: int, synack_ns: int) -> list[bytes]:
    """`count` entries with client ports from `first` on; returns their keys."""
    keys = [
        layout.HS_KEY.pack(ip_version=4, sport=443, cport=i & 0xFFFF, ifindex=i >> 16)
        for i in range(first, first + count)
    ]
    value = layout.HS.pack(syn_ns=syn_ns, synack_ns=synack_ns)
    for key in keys:
        libbpf().update(fd, key, value)
    return keys


def test_only_entries_past_the_timeout_expire_and_only_unanswered_ones_count(
    datapath: LoadedDatapath,
) -> None:
    fd = datapath.map_fds[layout.MAP_HANDSHAKES]
    reader = TcpHealthReader(datapath.map_fds, handshake_timeout_s=10.0)
    fill(fd, 0, 5_000, NOW - 11 * S, 0)  # old, never answered
    fill(fd, 5_000, 3_000, NOW - 10 * S, NOW - 9 * S)  # old (exactly the timeout), answered
    fresh = fill(fd, 8_000, 12_000, NOW - 9 * S, 0)  # younger than the timeout
    assert reader.expiry.expire(NOW) == Expired(unanswered=5_000, stale=3_000)
    left, _ = read_all(fd)
    assert sorted(left) == sorted(fresh)
    assert reader.expiry.expire(NOW) == Expired(0, 0)
    assert reader.counters()[layout.TcpCounter.UNANSWERED] == 5_000
    assert reader.read(NOW + 1 * S).attempts_unanswered_total == 5_000 + 12_000
    assert len(read_all(fd)[0]) == 0


def test_a_batch_delete_that_meets_a_vanished_key_deletes_the_rest(
    datapath: LoadedDatapath,
) -> None:
    fd = datapath.map_fds[layout.MAP_HANDSHAKES]
    keys = fill(fd, 0, 100, NOW, 0)
    libbpf().delete(fd, keys[40])  # completed between the read and the delete
    delete_all(fd, keys)
    assert len(read_all(fd)[0]) == 0

"""Expire handshakes the data plane opened and no SYN/ACK ever answered.

The TC programs open a HANDSHAKES entry on a SYN and close it on the client's
ACK or a RST; a SYN nobody answers leaves its entry behind. Only user space
knows the timeout, so the agent reads the (bounded) LRU once per interval with
batched lookups, deletes entries older than `tcp_handshake_timeout` and counts
those without a SYN/ACK as unanswered. The count goes into the pinned
TCP_COUNTERS map (a slot the programs never write), so it survives an agent
restart like every other cumulative figure. A SYN/ACK that arrives after the
timeout finds no entry: by definition the attempt went unanswered within the
timeout.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import numpy as np

from sennet.agent.datapath import layout, tally
from sennet.agent.datapath.libbpf import libbpf

CHUNK = 8192  # entries per batched lookup: a whole table in eight system calls


@dataclass(frozen=True)
class Expired:
    unanswered: int  # no SYN/ACK within the timeout
    stale: int  # SYN/ACK seen, the client's ACK never was (the tap missed it, or the client died)


def read_all(fd: int) -> tuple[np.ndarray, np.ndarray]:
    """Every key and value of a HANDSHAKES map, by BPF_MAP_LOOKUP_BATCH (the kernel's
    snapshot semantics: an entry added or removed meanwhile may or may not appear)."""
    lb = libbpf()
    capacity = lb.map_info(fd).max_entries
    token = ctypes.create_string_buffer(8)  # hash maps: a bucket cursor
    keys, values = [], []
    for n in range(capacity // CHUNK + 2):
        k = np.zeros(CHUNK, dtype=layout.HS_KEY_DTYPE)
        v = np.zeros(CHUNK, dtype=layout.HS_DTYPE)
        count, done = lb.lookup_batch(fd, token, k.ctypes.data, v.ctypes.data, CHUNK, n == 0)
        keys.append(k[:count])
        values.append(v[:count])
        if done:
            break
    return np.concatenate(keys), np.concatenate(values)


def delete_all(fd: int, keys: np.ndarray) -> None:
    """Delete `keys` in batches; one gone already (its handshake completed meanwhile)
    is skipped."""
    if len(keys):
        libbpf().delete_batch(fd, keys.ctypes.data, len(keys), keys.dtype.itemsize)


class HandshakeExpiry:
    def __init__(self, handshakes_fd: int, counters_fd: int, timeout_s: float) -> None:
        self.handshakes_fd = handshakes_fd
        self.counters_fd = counters_fd
        self.timeout_ns = int(timeout_s * 1e9)
        self.ncpus = libbpf().possible_cpus()

    def expire(self, now_ns: int | None = None) -> Expired:
        """Delete entries older than the timeout; add the unanswered ones to the pinned counter.

        `now_ns` is CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns().
        """
        now = time.monotonic_ns() if now_ns is None else now_ns
        keys, values = read_all(self.handshakes_fd)
        syn = values["syn_ns"].astype(np.int64)
        old = (syn <= now) & (now - syn >= self.timeout_ns)
        delete_all(self.handshakes_fd, np.ascontiguousarray(keys[old]))
        unanswered = int(np.count_nonzero(old & (values["synack_ns"] == 0)))
        stale = int(np.count_nonzero(old)) - unanswered
        tally.add_to_slot(self.counters_fd, layout.TcpCounter.UNANSWERED, unanswered)
        return Expired(unanswered, stale)

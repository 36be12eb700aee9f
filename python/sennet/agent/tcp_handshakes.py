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
import errno
import time
from dataclasses import dataclass

import numpy as np

from sennet.agent.datapath import layout, tally
from sennet.agent.datapath.libbpf import BpfError, libbpf

CHUNK = 8192  # entries per batched lookup: a whole table in eight system calls


@dataclass(frozen=True)
class Expired:
    unanswered: int  # no SYN/ACK within the timeout
    stale: int  # SYN/ACK seen, the client's ACK never was (the tap missed it, or the client died)


def read_all(fd: int) -> tuple[np.ndarray, np.ndarray]:
    """Every key and value of a HANDSHAKES map, by BPF_MAP_LOOKUP_BATCH (the kernel's
    snapshot semantics: an entry added or removed meanwhile may or may not appear)."""
    lib = libbpf().lib
    capacity = libbpf().map_info(fd).max_entries
    keys, values = [], []
    token_in = ctypes.create_string_buffer(8)  # hash maps: a bucket cursor
    token_out = ctypes.create_string_buffer(8)
    first = True
    for _ in range(capacity // CHUNK + 2):
        k = np.zeros(CHUNK, dtype=layout.HS_KEY_DTYPE)
        v = np.zeros(CHUNK, dtype=layout.HS_DTYPE)
        count = ctypes.c_uint32(CHUNK)
        rc = lib.bpf_map_lookup_batch(
            fd,
            None if first else token_in,
            token_out,
            k.ctypes.data,
            v.ctypes.data,
            ctypes.byref(count),
            None,
        )
        err = ctypes.get_errno() if rc < 0 else 0
        if rc < 0 and err != errno.ENOENT:
            raise BpfError(err, f"batched lookup (fd {fd})")
        keys.append(k[: count.value])
        values.append(v[: count.value])
        if err == errno.ENOENT:
            break  # that was the last chunk
        ctypes.memmove(token_in, token_out, 8)
        first = False
    return np.concatenate(keys), np.concatenate(values)


def delete_all(fd: int, keys: np.ndarray) -> None:
    """Delete `keys` in one call; if one is gone already (its handshake completed
    meanwhile), the kernel stops there, and the rest go one by one."""
    if len(keys) == 0:
        return
    lb = libbpf()
    count = ctypes.c_uint32(len(keys))
    if lb.lib.bpf_map_delete_batch(fd, keys.ctypes.data, ctypes.byref(count), None) == 0:
        return
    for key in keys[count.value :]:
        lb.delete(fd, key.tobytes())


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

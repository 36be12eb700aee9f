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
from collections.abc import Sequence
from dataclasses import dataclass

from sennet.agent.datapath import layout, tally
from sennet.agent.datapath.libbpf import libbpf

CHUNK = 8192  # entries per batched lookup: a whole table in eight system calls
_VALUE_WORDS = layout.HS.itemsize // 8  # struct sennet_hs as u64 words: syn_ns, synack_ns, ...
assert (layout.HS.offset("syn_ns"), layout.HS.offset("synack_ns")) == (0, 8)


@dataclass(frozen=True)
class Expired:
    unanswered: int  # no SYN/ACK within the timeout
    stale: int  # SYN/ACK seen, the client's ACK never was (the tap missed it, or the client died)


def read_all(fd: int) -> tuple[list[bytes], bytes]:
    """Every key of a HANDSHAKES map (one bytes each) and every value (packed, in the same
    order), by BPF_MAP_LOOKUP_BATCH (the kernel's snapshot semantics: an entry added or
    removed meanwhile may or may not appear)."""
    lb = libbpf()
    capacity = lb.map_info(fd).max_entries
    ks, vs = layout.HS_KEY.itemsize, layout.HS.itemsize
    token = ctypes.create_string_buffer(8)  # hash maps: a bucket cursor
    kbuf, vbuf = ctypes.create_string_buffer(CHUNK * ks), ctypes.create_string_buffer(CHUNK * vs)
    keys: list[bytes] = []
    values: list[bytes] = []
    for n in range(capacity // CHUNK + 2):
        count, done = lb.lookup_batch(
            fd, token, ctypes.addressof(kbuf), ctypes.addressof(vbuf), CHUNK, n == 0
        )
        raw = kbuf.raw[: count * ks]
        keys += [raw[i : i + ks] for i in range(0, len(raw), ks)]
        values.append(vbuf.raw[: count * vs])
        if done:
            break
    return keys, b"".join(values)


def delete_all(fd: int, keys: Sequence[bytes]) -> None:
    """Delete `keys` in batches; one gone already (its handshake completed meanwhile)
    is skipped."""
    if keys:
        packed = ctypes.create_string_buffer(b"".join(keys))
        libbpf().delete_batch(fd, packed, len(keys), layout.HS_KEY.itemsize)


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
        # Signed, as the clock is (x86: native order is the kernel's).
        words = memoryview(values).cast("q")
        syn, synack = words[0::_VALUE_WORDS].tolist(), words[1::_VALUE_WORDS].tolist()
        timeout = self.timeout_ns
        old = [i for i, t in enumerate(syn) if t <= now and now - t >= timeout]
        delete_all(self.handshakes_fd, [keys[i] for i in old])
        unanswered = sum(1 for i in old if synack[i] == 0)
        stale = len(old) - unanswered
        tally.add_to_slot(self.counters_fd, layout.TcpCounter.UNANSWERED, unanswered)
        return Expired(unanswered, stale)

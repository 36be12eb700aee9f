"""Expire handshakes the data plane opened and no SYN/ACK ever answered.

The TC programs open a HANDSHAKES entry on a SYN and close it on the client's
ACK or a RST; a SYN nobody answers leaves its entry behind. Only user space
knows the timeout, so the agent walks the (bounded) LRU once per interval,
deletes entries older than `tcp_handshake_timeout` and counts those without a
SYN/ACK as unanswered. The count goes into the pinned TCP_COUNTERS map (a slot
the programs never write), so it survives an agent restart like every other
cumulative figure. A SYN/ACK that arrives after the timeout finds no entry: by
definition the attempt went unanswered within the timeout.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import numpy as np

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf

_SLOT_UNANSWERED = struct.pack("<I", layout.TcpCounter.UNANSWERED)


@dataclass(frozen=True)
class Expired:
    unanswered: int  # no SYN/ACK within the timeout
    stale: int  # SYN/ACK seen, the client's ACK never was (the tap missed it, or the client died)


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
        lb = libbpf()
        now = time.monotonic_ns() if now_ns is None else now_ns
        key_size, value_size = layout.HS_KEY_DTYPE.itemsize, layout.HS_DTYPE.itemsize
        # Keys first (at most max_entries), then delete: deleting while walking
        # would restart get_next_key from the beginning.
        keys = []
        for key in lb.keys(self.handshakes_fd, key_size):
            keys.append(key)
            if len(keys) >= layout.TCP_HANDSHAKES:
                break
        unanswered = stale = 0
        for key in keys:
            raw = lb.lookup(self.handshakes_fd, key, value_size)
            if raw is None:
                continue  # completed meanwhile
            hs = np.frombuffer(raw, dtype=layout.HS_DTYPE, count=1)[0]
            syn_ns = int(hs["syn_ns"])
            if syn_ns > now or now - syn_ns < self.timeout_ns:
                continue
            lb.delete(self.handshakes_fd, key)
            if int(hs["synack_ns"]) == 0:
                unanswered += 1
            else:
                stale += 1
        if unanswered:
            self._add_unanswered(unanswered)
        return Expired(unanswered, stale)

    def _add_unanswered(self, n: int) -> None:
        """Add to CPU 0's copy of the slot; the programs never write it, so no update races."""
        lb = libbpf()
        raw = lb.lookup(self.counters_fd, _SLOT_UNANSWERED, 8 * self.ncpus)
        values = np.zeros(self.ncpus, dtype="<u8")
        if raw is not None:
            values[:] = np.frombuffer(raw, dtype="<u8", count=self.ncpus)
        values[0] += np.uint64(n)
        lb.update(self.counters_fd, _SLOT_UNANSWERED, values.tobytes())

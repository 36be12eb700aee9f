"""Read the interval's microbursts: the busiest 1 ms and 10 ms window per interface and direction.

The programs keep, per counter slot, the window being filled and the maxima of
the interval under a bpf_spin_lock (bpf/flows.h). Maxima are kept twice, by the
parity of an epoch the agent owns (BURST_EPOCH): to end interval e the agent
writes e+1, so the programs start filling the other parity, and then reads
parity e with BPF_F_LOCK (the kernel copies the value while holding the lock,
so no half-updated window is ever seen). Nothing has to be reset from user
space, which could race with a packet.

Windows are aligned: a 1 ms window covers [k ms, (k+1) ms) of the monotonic
clock. The most packets and the most bytes may come from different windows.
A window that straddles the end of an interval counts in both intervals.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.manager import Attached
from sennet.agent.telemetry import Microburst

_KEY0 = struct.pack("<I", 0)


class BurstReader:
    """Reads and restarts the microburst maxima; `read()` once per interval, from one thread."""

    def __init__(self, bursts_fd: int, epoch_fd: int) -> None:
        self.lb = libbpf()
        self.bursts_fd = bursts_fd
        self.epoch_fd = epoch_fd
        raw = self.lb.lookup(epoch_fd, _KEY0, 4)
        self.epoch = struct.unpack("<I", raw)[0] if raw else 0

    def read(self, attached: Sequence[Attached]) -> tuple[Microburst, ...]:
        """End the interval: switch the epoch, then read the maxima of the one that ended."""
        ended = self.epoch
        self.epoch = (ended + 1) & 0xFFFFFFFF
        self.lb.update(self.epoch_fd, _KEY0, struct.pack("<I", self.epoch))
        out: list[Microburst] = []
        for a in attached:
            for direction in layout.Direction:
                key = struct.pack("<I", a.slot * 2 + direction)
                raw = self.lb.lookup_locked(self.bursts_fd, key, layout.BURST.itemsize)
                maxima = self._maxima(raw, ended)
                for ms, (packets, bytes_) in zip(layout.BURST_WINDOWS_MS, maxima, strict=True):
                    out.append(Microburst(a.ifname, direction.label, ms, packets, bytes_))
        return tuple(out)

    def _maxima(self, raw: bytes | None, ended: int) -> list[tuple[int, int]]:
        """(packets, bytes) per window length for epoch `ended`, from one locked copy."""
        if raw is None:
            return [(0, 0) for _ in layout.BURST_WINDOWS_MS]
        value = layout.BURST.unpack(raw)
        if value["epoch"] not in (ended, self.epoch):
            return [(0, 0) for _ in layout.BURST_WINDOWS_MS]  # no packet in this interval
        parity = ended & 1
        out = []
        for ms in layout.BURST_WINDOWS_MS:
            packets, bytes_ = value[f"w{ms}_max_packets"], value[f"w{ms}_max_bytes"]
            assert isinstance(packets, tuple) and isinstance(bytes_, tuple)
            out.append((packets[parity], bytes_[parity]))
        return out

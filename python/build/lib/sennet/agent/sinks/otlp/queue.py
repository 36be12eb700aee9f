"""The export queue: encoded batches waiting for a collector, bounded in bytes.

Bytes, not batches, because a batch of 10,000 log records and a metrics batch
of a quiet host differ a thousandfold: only a byte bound bounds memory. When a
new batch does not fit, the oldest metrics batches go first: metrics are
cumulative, so the newer batch carries everything an older one did (per-interval
gauges of the dropped interval are the only loss). Log records cannot be
replaced, so they are dropped only when no metrics batch is left to drop, and
every dropped record is counted, by signal.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from sennet.agent.sinks.otlp.transport import METRICS


@dataclass(eq=False)
class Batch:
    signal: str
    body: bytes  # the serialized Export*ServiceRequest
    items: int  # data points or log records
    attempts: int = field(default=0)


@dataclass
class Dropped:
    batches: int = 0
    items: int = 0


class ExportQueue:
    """FIFO of batches under a byte limit; thread-safe."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self._items: deque[Batch] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self.dropped: dict[str, Dropped] = {}
        self.peak_bytes = 0
        self._inflight: Batch | None = None  # being sent: never evicted under the sender

    def put(self, batch: Batch) -> list[Batch]:
        """Queue `batch`, dropping what must go to stay within the limit; returns the dropped."""
        dropped: list[Batch] = []
        with self._lock:
            size = len(batch.body)
            while self._bytes + size > self.limit and (victim := self._victim()) is not None:
                self._items.remove(victim)
                self._bytes -= len(victim.body)
                dropped.append(victim)
            if self._bytes + size > self.limit:
                dropped.append(batch)  # larger than the limit, or only the one in flight left
            else:
                self._items.append(batch)
                self._bytes += size
                self.peak_bytes = max(self.peak_bytes, self._bytes)
            for d in dropped:
                counted = self.dropped.setdefault(d.signal, Dropped())
                counted.batches += 1
                counted.items += d.items
        return dropped

    def _victim(self) -> Batch | None:
        """The oldest metrics batch, else the oldest batch; never the one in flight."""
        waiting = [b for b in self._items if b is not self._inflight]
        return next((b for b in waiting if b.signal == METRICS), waiting[0] if waiting else None)

    def head(self) -> Batch | None:
        """The oldest batch, now in flight until `done()` or the next `head()`."""
        with self._lock:
            self._inflight = self._items[0] if self._items else None
            return self._inflight

    def done(self, batch: Batch) -> None:
        """Remove a delivered (or permanently refused) batch, if an overflow has not already."""
        with self._lock:
            self._inflight = None
            if self._items and self._items[0] is batch:
                self._items.popleft()
                self._bytes -= len(batch.body)
            elif batch in self._items:
                self._items.remove(batch)
                self._bytes -= len(batch.body)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

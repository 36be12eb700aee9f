"""The agent gives back, once it is up, the heap that start-up freed (glibc's malloc_trim)."""

from __future__ import annotations

from sennet.agent import heap, marks


def test_freed_heap_in_the_middle_goes_back_to_the_kernel() -> None:
    # 1 KiB objects come from malloc (pymalloc takes only up to 512 bytes). One in a hundred
    # stays, so the freed ones lie between live chunks, where free() itself never trims.
    chunks = [bytes(1024) + bytes([i % 256]) for i in range(40_000)]
    kept = chunks[::100]
    del chunks
    before = marks.rss_kib()
    assert heap.release_freed() is True
    after = marks.rss_kib()
    assert before - after > 20 * 1024, (before, after)  # of about 39 MiB freed
    assert len(kept) == 400

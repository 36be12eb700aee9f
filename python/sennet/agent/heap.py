"""Give the kernel back the heap that start-up used and freed.

Start-up allocates and frees more than the idle agent ever holds again: libbpf
parses the kernel's BTF to load the programs, Python compiles and imports a few
hundred modules, the gRPC stack initialises. glibc keeps freed memory in the
process for reuse, and most of it never is. `malloc_trim(0)` returns every whole
free page of the heaps to the kernel (MADV_DONTNEED), once, when the agent is up
(its second heartbeat: issue 16, 0.6-0.7 MiB of the idle RSS on the host,
bench/footprint.py). Nothing is lost: a later allocation simply gets fresh pages.
"""

from __future__ import annotations

import ctypes


def release_freed() -> bool:
    """glibc's malloc_trim(0); False where there is none (another libc) or it failed."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))

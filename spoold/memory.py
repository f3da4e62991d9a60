"""Giving large freed buffers back to the system at once (glibc's malloc).

A large write passes through a few multi-MiB buffers (the body read, the pointer
array of a long JSON list, the encoded operation, the batch body), in the event
loop and in worker threads alike. glibc serves such buffers with ``mmap`` and
unmaps them on free, but only up to its *dynamic* threshold: each freed mmapped
buffer raises the threshold to its size (up to 32 MiB), after which buffers that
size come from the heaps - one per thread - and stay resident after they are
freed. Under a flood of large bodies that kept hundreds of MiB resident and took
spoold past its unit's ``MemoryMax`` (tests/faults/test_memory_flood.py). A fixed
threshold keeps every buffer of ``MMAP_THRESHOLD_BYTES`` or more mmapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import structlog

log = structlog.get_logger("spoold.memory")

#: glibc's mallopt parameter number for the mmap threshold (malloc.h).
M_MMAP_THRESHOLD = -3
#: Buffers from this size up are mmapped (and unmapped when freed).
MMAP_THRESHOLD_BYTES = 1024 * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold (disabling its dynamic raise); False where there is no
    glibc (musl, macOS), which is harmless: only the resident size is at stake."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold) == 1)
    if not done:
        log.warning("malloc_threshold_not_set", threshold=threshold)
    return done

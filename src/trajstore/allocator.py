"""Keeping large message buffers out of the kernel's page-fault path.

Data moves through gRPC in messages of megabytes. With glibc's defaults each
such buffer is ``mmap``'ed and ``munmap``'ed again (or the heap is trimmed
and regrown), so every byte received costs a page fault and a page zeroed:
about half the store's CPU time on the MD benchmark, and a third of a
remote reader's on whole-dataset reads, went to the kernel. Raising the
mmap and trim thresholds lets freed buffers be reused from the heap.

The thresholds belong to the whole process, so the library never sets them
by itself: ``trajstore serve`` and ``trajstore pull`` call
:func:`keep_large_buffers` (processes of their own), and an analysis script
that reads large slices may call it once at its start. In a simulation
process it is the user's call: the remote MD writer ran 5-10 % faster with
it in A/Bs here, big frames no faster (BENCHMARKS.md, item 13).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["keep_large_buffers"]

log = logging.getLogger("trajstore")

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_large_buffers(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Serve allocations below ``mmap_threshold`` from the heap; keep ``trim_threshold`` free.

    Call it once, early, in a process of your own that serves or reads large
    slices. The price is memory: up to ``trim_threshold`` bytes freed by the
    process stay in its heap for reuse instead of going back to the system.

    Returns ``False`` (and changes nothing) where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
    log.debug("allocator thresholds set", extra={"applied": done})
    return done

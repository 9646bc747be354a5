"""Keeping the store's large message buffers out of the kernel's page-fault path.

Every block arrives in buffers of megabytes. With glibc's defaults each is
``mmap``'ed and ``munmap``'ed again, so every byte received costs a page
fault: about half the store's CPU time on the MD benchmark went to the
kernel. Raising the mmap and trim thresholds lets freed buffers be reused
from the heap instead. Only ``trajstore serve`` calls this (a process of its
own); an in-process server leaves its host's allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["keep_large_buffers"]

log = logging.getLogger("trajstore.server")

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_large_buffers(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Serve allocations below ``mmap_threshold`` from the heap; keep ``trim_threshold`` free.

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

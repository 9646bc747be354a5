"""keep_large_buffers: applied where the C library is glibc, a no-op elsewhere."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


def _call_in_child(code: str) -> str:
    # Allocator thresholds belong to the whole process: never change pytest's own.
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_large_buffers_applies_on_glibc_and_reads_stay_exact():
    out = _call_in_child(
        "import numpy as np, trajstore\n"
        "print(trajstore.keep_large_buffers())\n"
        "blocks = [np.full(3 << 20, i, np.uint8).tobytes() for i in range(8)]\n"
        "print(all(b == bytes([i]) * (3 << 20) for i, b in enumerate(blocks)))\n"
    )
    assert out.splitlines() == ["True", "True"]


def test_keep_large_buffers_changes_nothing_without_a_c_library():
    out = _call_in_child(
        "import ctypes.util, trajstore.allocator as a\n"
        "ctypes.util.find_library = lambda name: None\n"
        "print(a.keep_large_buffers())\n"
    )
    assert out == "False"

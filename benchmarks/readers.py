"""One measured reader in its own process: ``python -m benchmarks.readers``.

Reads the ``pos`` leaf of an MD run three ways — the whole dataset (median
of 5), one random frame (median of ``--samples``), in chunks of 64 frames —
from a local file or through the store, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np


def measure(reader: Any, samples: int) -> dict[str, float]:
    """Whole, random-frame and chunked read figures of one open reader."""
    traj = reader.focus_group("group['traj']")
    n = len(traj)
    whole_times = []
    for _ in range(5):
        t = time.perf_counter()
        whole = traj.read(slice(None), select=lambda s: s["pos"])
        whole_times.append(time.perf_counter() - t)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(samples):
        i = int(rng.integers(n))
        t = time.perf_counter()
        traj.read(i, select=lambda s: s["pos"])
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    for _chunk in traj.read_chunked(64, select=lambda s: s["pos"]):
        pass
    chunked_s = time.perf_counter() - t
    return {
        "whole_mb_s": whole.nbytes / float(np.median(whole_times)) / 1e6,
        "random_frame_median_ms": float(np.median(times) * 1e3),
        "chunked_mb_s": whole.nbytes / chunked_s / 1e6,
    }


def main() -> int:
    """Worker entry point."""
    parser = argparse.ArgumentParser()
    parser.add_argument("reader", choices=["local", "remote"])
    parser.add_argument("target", help="a file path, or ADDRESS/RUN for the remote reader")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--keep-large-buffers", action="store_true", help="call trajstore.keep_large_buffers()"
    )
    args = parser.parse_args()
    import trajstore

    if args.keep_large_buffers:
        trajstore.keep_large_buffers()
    if args.reader == "local":
        opened: Any = trajstore.HDF5StorageReader(args.target)
    else:
        address, run = args.target.split("/", 1)
        opened = trajstore.RemoteStorageReader(address, run)
    with opened as reader:
        result = measure(reader, args.samples)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the run's lock costs per open: ``python -m benchmarks.lock_cost``.

Every writer takes ``<run>.h5.lock`` (store/ownership.py) when it opens a
run. This opens and closes a small run for appending ``--opens`` times with
the lock taken per open (what writers do) and with one lock held across all
opens (``lock=`` a share: no OS lock per open), and times the lock alone
(open the lock file, ``F_OFD_SETLK``, record the holder, unlock, close).
Prints microseconds per open (medians) and one JSON line. ``--dir`` puts
the files on the filesystem to measure (a shared one costs more).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.store.ownership import RunLock
from trajstore.store.writer import RunFileWriter


def small_spec() -> RunSpec:
    leaf = LeafSpec(path="['x']", dtype="float32", shape=(64, 3))
    return RunSpec(groups=(GroupSpec(name="x", time_axis=True, leaves=(leaf,)),), total_steps=100)


def median_us(action: Callable[[], None], opens: int) -> float:
    times = []
    for _ in range(opens):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def measure(directory: Path, opens: int) -> dict[str, float]:
    """Median µs per open: the lock alone, and an append-open and close with and without it."""
    path = directory / "run.h5"
    spec = small_spec()
    writer = RunFileWriter(path, spec, mode="create")
    writer.write_block(0, 0, 10, [np.zeros((10, 64, 3), np.float32)])
    writer.close()

    def lock_alone() -> None:
        RunLock.acquire(path).release()

    def open_locked() -> None:
        RunFileWriter(path, spec, mode="append").close()

    results: dict[str, float] = {}
    with RunLock.acquire(path) as held:  # one lock across these opens

        def open_under_held_lock() -> None:
            RunFileWriter(path, spec, mode="append", lock=held.share()).close()

        open_under_held_lock()  # warm up
        results["open_close_without_lock_us"] = median_us(open_under_held_lock, opens)
    lock_alone()
    open_locked()
    results["lock_us"] = median_us(lock_alone, opens)
    results["open_close_with_lock_us"] = median_us(open_locked, opens)
    results["lock_share_of_open"] = results["lock_us"] / results["open_close_with_lock_us"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        results = measure(Path(scratch), args.opens)
    print(f"lock alone:                      {results['lock_us']:8.1f} µs")
    print(f"append-open + close, lock taken: {results['open_close_with_lock_us']:8.1f} µs")
    print(f"append-open + close, lock held:  {results['open_close_without_lock_us']:8.1f} µs")
    print(json.dumps({"lock_cost": results}))


if __name__ == "__main__":
    main()

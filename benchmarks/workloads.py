"""The reference workloads of DESIGN.md section 6, and one measured run of each writer.

Run as a worker: ``python -m benchmarks.workloads WRITER WORKLOAD TARGET [--scale S]``
prints one JSON line: seconds until everything is durable, ``log()`` latency
percentiles, and the process's peak RSS growth.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np


@dataclass(frozen=True)
class Workload:
    """What one simulation logs: leaves per step and how many steps."""

    name: str
    steps: int
    atoms: int = 0  # MD: particles; big: rows

    def state(self, step: int) -> dict[str, Any]:
        """A state at ``step`` (values vary with the step; shapes never do)."""
        if self.name == "scalars":
            return {"a": np.float32(step), "b": np.float32(step * 0.5), "c": np.float32(1.0)}
        if self.name == "big":
            return {"pos": np.full((self.atoms, 3), step, np.float32)}
        rng = np.random.default_rng(step)
        pos = rng.random((self.atoms, 3), dtype=np.float32)
        return {"pos": pos, "vel": pos * 0.5, "energy": np.float32(step), "box": np.eye(3)}

    def config(self, compression: Any) -> dict[str, Any]:
        """The logging config (compression ``None`` unless asked)."""
        from trajstore import EveryNStep, Once, WriterGroupConfig, view

        if self.name == "scalars":
            return {
                "s": WriterGroupConfig(view(lambda s: s), EveryNStep(1), compression=compression)
            }
        if self.name == "big":
            return {
                "traj": WriterGroupConfig(
                    view(lambda s: s["pos"]), EveryNStep(1), compression=compression
                )
            }
        return {
            "traj": WriterGroupConfig(
                view(lambda s: {"pos": s["pos"], "vel": s["vel"]}),
                EveryNStep(1),
                compression=compression,
            ),
            "energy": WriterGroupConfig(
                view(lambda s: s["energy"]), EveryNStep(1), compression=compression
            ),
            "box": WriterGroupConfig(view(lambda s: s["box"]), Once(), compression=compression),
        }

    def frame_bytes(self) -> int:
        """Bytes logged per step."""
        state = self.state(1)
        return sum(np.asarray(v).nbytes for k, v in state.items() if k != "box")


def workload(name: str, scale: float) -> Workload:
    """A reference workload, shrunk by ``scale`` (1 = as in DESIGN.md)."""
    if name == "md":
        return Workload("md", max(int(2000 * scale), 10), 10_000)
    if name == "scalars":
        return Workload("scalars", max(int(100_000 * scale), 100))
    if name == "big":
        return Workload("big", max(int(40 * scale), 2), 1_000_000)
    raise SystemExit(f"unknown workload {name}")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_writer(
    kind: str, load: Workload, target: str, compression: Any, barrier: bool = False
) -> dict[str, Any]:
    """Log ``load`` through ``kind`` (local, remote, h5py); time until durable.

    With ``barrier``, print ``ready`` once set up and wait for a line on stdin
    before starting (so that concurrent writers start together).
    """
    from trajstore import HDF5StorageWriter, RemoteStorageWriter  # imports JAX: not measured

    states = [load.state(i) for i in range(min(load.steps, 64))]  # prebuilt, reused
    rss_before = _rss_mb()
    if barrier:
        print("ready", flush=True)
        sys.stdin.readline()
    began_at = time.time()
    latencies = np.empty(load.steps)
    cpu_before = os.times()
    started = time.perf_counter()
    if kind == "h5py":
        _raw_h5py(load, target, states)
    else:
        config = load.config(compression)
        if kind == "local":
            writer: Any = HDF5StorageWriter(
                target, config, states[0], load.steps, compile_views=False
            )
        else:
            address, run = target.split("/", 1)
            writer = RemoteStorageWriter(
                address, run, config, states[0], load.steps, compile_views=False, mode="overwrite"
            )
        with writer:
            for step in range(load.steps):
                state = states[step % len(states)]
                t = time.perf_counter()
                writer.log(state, step)
                latencies[step] = time.perf_counter() - t
    seconds = time.perf_counter() - started
    cpu_after = os.times()
    logged = latencies if kind != "h5py" else np.zeros(1)
    return {
        "seconds": seconds,
        "began_at": began_at,
        "ended_at": time.time(),
        "log_median_us": float(np.median(logged) * 1e6),
        "log_p99_us": float(np.percentile(logged, 99) * 1e6),
        "rss_growth_mb": _rss_mb() - rss_before,
        "cpu_user_s": cpu_after.user - cpu_before.user,
        "cpu_system_s": cpu_after.system - cpu_before.system,
        "bytes": load.steps * load.frame_bytes(),
    }


def _raw_h5py(load: Workload, path: str, states: list[dict[str, Any]]) -> None:
    """The limit: the same layout written by plain h5py from pre-stacked blocks."""
    import h5py

    block = 64
    keys = [k for k in states[0] if k != "box"]
    stacked = {k: np.stack([np.asarray(s[k]) for s in states[:block]]) for k in keys}
    with h5py.File(path, "w", libver=("v110", "latest")) as f:
        datasets = {
            k: f.create_dataset(
                k,
                shape=(load.steps, *stacked[k].shape[1:]),
                dtype=stacked[k].dtype,
                chunks=(1, *stacked[k].shape[1:]) if load.name == "big" else None,
            )
            for k in keys
        }
        for start in range(0, load.steps, block):
            stop = min(start + block, load.steps)
            for k, ds in datasets.items():
                ds[start:stop] = stacked[k][: stop - start]
        f.flush()


def main() -> int:
    """Worker entry point."""
    parser = argparse.ArgumentParser()
    parser.add_argument("writer", choices=["local", "remote", "h5py"])
    parser.add_argument("workload", choices=["md", "scalars", "big"])
    parser.add_argument("target", help="a file path, or ADDRESS/RUN for the remote writer")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--zstd", action="store_true", help="compress with zstd")
    parser.add_argument(
        "--barrier", action="store_true", help="print 'ready', start on a line from stdin"
    )
    parser.add_argument(
        "--keep-large-buffers", action="store_true", help="call trajstore.keep_large_buffers()"
    )
    args = parser.parse_args()
    from trajstore import Compression, keep_large_buffers

    if args.keep_large_buffers:
        keep_large_buffers()

    compression = Compression("zstd", 1) if args.zstd else None
    load = workload(args.workload, args.scale)
    result = run_writer(args.writer, load, args.target, compression, args.barrier)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

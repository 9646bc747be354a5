"""A second local writer process: writes frames of the live writer's run to a file.

``local_holder.py PATH --mode M --start S --frames N [--hold]``: opens PATH with
``HDF5StorageWriter`` in mode M, logs frames S..S+N-1 (frame i holds i, as
``live_writer.py``), flushes and prints ``durable S+N``; with ``--hold`` it then
waits for a line on stdin (or a SIGKILL) before closing. Prints ``closed`` once
closed. If the run is locked it prints ``locked <holder>`` and exits with 3.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

from trajstore import EveryNStep, HDF5StorageWriter, WriterGroupConfig, view
from trajstore.errors import RunLockedError


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--mode", default="overwrite")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--hold", action="store_true")
    args = parser.parse_args()
    config = {"x": WriterGroupConfig(view(lambda s: {"a": s["a"], "b": s["b"]}), EveryNStep(1))}

    def state(step: int) -> dict[str, np.ndarray]:
        return {"a": np.full((64, 3), step, np.float32), "b": np.int64(step)}

    writer = HDF5StorageWriter(args.path, config, state(0), mode=args.mode, compile_views=False)
    try:
        log = writer.__enter__()
    except RunLockedError as e:
        print("locked", e.holder, flush=True)
        sys.exit(3)
    try:
        for step in range(args.start, args.start + args.frames):
            log.log(state(step), step)
        log.flush()
        print("durable", args.start + args.frames, flush=True)
        if args.hold:
            sys.stdin.readline()
    finally:
        writer.__exit__(None, None, None)
    print("closed", flush=True)


if __name__ == "__main__":
    main()

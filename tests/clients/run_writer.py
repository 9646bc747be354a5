"""Writes one deterministic run, locally (``--local PATH``) or to a store (``--address A --run R``).

Used by the tests as a real client process; the same seed gives the same states.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

from trajstore import (
    Compression,
    EveryNStep,
    HDF5StorageWriter,
    Once,
    RemoteStorageWriter,
    WriterGroupConfig,
    view,
)

STEPS = 120


def config():
    return {
        "traj": WriterGroupConfig(
            view(lambda s: {"pos": s["pos"], "vel": s["vel"]}),
            EveryNStep(3),
            compression=Compression("zstd", 2),
        ),
        "energy": WriterGroupConfig(view(lambda s: s["energy"]), EveryNStep(1), compression=None),
        "box": WriterGroupConfig(view(lambda s: s["box"]), Once()),
        "flags": WriterGroupConfig(view(lambda s: s["flags"]), EveryNStep(7)),
    }


def states(seed: int):
    rng = np.random.default_rng(seed)
    state = {
        "pos": rng.random((300, 3), dtype=np.float32),
        "vel": rng.random((300, 3), dtype=np.float32),
        "energy": np.float64(0),
        "box": np.eye(3) * (seed + 1),
        "flags": rng.random(5) > 0.5,
    }
    for step in range(STEPS):
        state = {
            **state,
            "pos": state["pos"] + rng.random((300, 3), dtype=np.float32),
            "energy": np.float64(step * seed),
            "flags": rng.random(5) > 0.5,
        }
        yield step, state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local")
    parser.add_argument("--address")
    parser.add_argument("--run")
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    first = next(states(args.seed))[1]
    metadata = {"seed": args.seed}
    if args.local:
        writer = HDF5StorageWriter(
            args.local, config(), first, STEPS, metadata=metadata, compile_views=False
        )
    else:
        writer = RemoteStorageWriter(
            args.address, args.run, config(), first, STEPS, metadata=metadata, compile_views=False
        )
    with writer as log:
        for step, state in states(args.seed):
            log.log(state, step)
            if step == 60:
                log.flush()
    print("done")


if __name__ == "__main__":
    main()

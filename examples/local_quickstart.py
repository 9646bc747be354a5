"""A tiny JAX "simulation" logged to a local HDF5 file, then read back.

Run: ``make example`` (or ``python examples/local_quickstart.py [OUT.h5]``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp

from trajstore import (
    EveryNStep,
    HDF5StorageReader,
    HDF5StorageWriter,
    Once,
    WriterGroupConfig,
    view,
)


def main(out: Path) -> None:
    key = jax.random.PRNGKey(0)
    state = {
        "pos": jax.random.uniform(key, (256, 3)) * 10.0,
        "vel": jnp.zeros((256, 3)),
        "energy": jnp.float32(0.0),
        "box": jnp.eye(3) * 10.0,
    }

    @jax.jit
    def step(s):  # a toy integrator: a harmonic pull towards the box centre
        force = 5.0 - s["pos"]
        vel = s["vel"] + 0.01 * force
        pos = s["pos"] + 0.01 * vel
        return {**s, "pos": pos, "vel": vel, "energy": 0.5 * jnp.sum(vel**2)}

    config = {
        "traj": WriterGroupConfig(
            view(lambda s: {"pos": s["pos"], "vel": s["vel"]}), EveryNStep(10)
        ),
        "energy": WriterGroupConfig(view(lambda s: s["energy"]), EveryNStep(1)),
        "box": WriterGroupConfig(view(lambda s: s["box"]), Once()),
    }
    with HDF5StorageWriter(out, config, state, total_steps=1000, metadata={"dt": 0.01}) as log:
        for i in range(1000):
            state = step(state)
            log.log(state, i)

    with HDF5StorageReader(out) as reader:
        print("groups:", reader.list_groups())
        traj = reader.focus_group(lambda c: c["traj"])
        energy = reader.focus_group("group['energy']")
        print(f"{len(traj)} trajectory frames, {len(energy)} energies, metadata {reader.metadata}")
        print("last positions[:2]:", traj[-1]["pos"][:2])
        print("kinetic energy every 250 steps:", energy[::250])
        pos_only = traj.read(slice(0, 5), select=lambda s: s["pos"])
        print("first 5 frames of pos only:", pos_only.shape)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "run.h5"
    main(target)
    print("wrote", target)

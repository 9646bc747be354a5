"""A small JAX molecular dynamics simulation that logs its trajectory with trajstore.

Lennard-Jones particles (reduced units) in a periodic cubic box, integrated
with velocity Verlet. The state is a registered dataclass pytree. It logs
positions and velocities every ``--every`` steps, energies every step and the
box once — to a store (``--address``) or to a local file (``--local``).

    python -m trajstore.examples.lj_md --address 127.0.0.1:50051 --run demo/lj-1
    python -m trajstore.examples.lj_md --local lj.h5
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp

from trajstore import (
    EveryNStep,
    HDF5StorageWriter,
    Logger,
    Once,
    RemoteStorageWriter,
    WriterGroupConfig,
    view,
)

__all__ = ["MDState", "config", "initial_state", "main", "step"]

CUTOFF = 2.5


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class MDState:
    """Everything the integrator carries from one step to the next."""

    pos: jax.Array  # (n, 3), inside [0, box)
    vel: jax.Array  # (n, 3)
    force: jax.Array  # (n, 3)
    box: jax.Array  # (3,) edge lengths
    kinetic: jax.Array  # ()
    potential: jax.Array  # ()


def lj_forces(pos: jax.Array, box: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Forces and potential energy of a truncated, shifted LJ fluid (minimum image)."""
    delta = pos[:, None, :] - pos[None, :, :]
    delta = delta - box * jnp.round(delta / box)
    r2 = jnp.sum(delta**2, axis=-1)
    n = pos.shape[0]
    mask = (r2 < CUTOFF**2) & ~jnp.eye(n, dtype=bool)
    r2 = jnp.where(mask, r2, 1.0)
    inv6 = r2**-3
    shift = 4.0 * (CUTOFF**-12 - CUTOFF**-6)
    energy = jnp.where(mask, 4.0 * (inv6**2 - inv6) - shift, 0.0)
    magnitude = jnp.where(mask, 24.0 * (2.0 * inv6**2 - inv6) / r2, 0.0)
    forces = jnp.sum(magnitude[..., None] * delta, axis=1)
    return forces, 0.5 * jnp.sum(energy)


def initial_state(n_side: int, density: float, temperature: float, seed: int) -> MDState:
    """A simple-cubic lattice of ``n_side**3`` particles with Maxwell-Boltzmann velocities."""
    n = n_side**3
    edge = (n / density) ** (1 / 3)
    grid = jnp.stack(jnp.meshgrid(*[jnp.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = (grid + 0.5) * (edge / n_side)
    vel = jax.random.normal(jax.random.PRNGKey(seed), (n, 3))
    vel = vel - vel.mean(axis=0)
    vel = vel * jnp.sqrt(3 * (n - 1) * temperature / jnp.sum(vel**2))
    box = jnp.full((3,), edge)
    force, potential = lj_forces(pos, box)
    return MDState(pos, vel, force, box, 0.5 * jnp.sum(vel**2), potential)


@jax.jit
def step(state: MDState, dt: float = 0.005) -> MDState:
    """One velocity Verlet step."""
    vel = state.vel + 0.5 * dt * state.force
    pos = jnp.mod(state.pos + dt * vel, state.box)
    force, potential = lj_forces(pos, state.box)
    vel = vel + 0.5 * dt * force
    return MDState(pos, vel, force, state.box, 0.5 * jnp.sum(vel**2), potential)


def config(every: int) -> dict[str, WriterGroupConfig[Any, Any]]:
    """What to log: positions/velocities every ``every`` steps, energies every step, box once."""
    return {
        "traj": WriterGroupConfig(view(lambda s: {"pos": s.pos, "vel": s.vel}), EveryNStep(every)),
        "energy": WriterGroupConfig(
            view(
                lambda s: {
                    "kinetic": s.kinetic,
                    "potential": s.potential,
                    "total": s.kinetic + s.potential,
                }
            ),
            EveryNStep(1),
        ),
        "box": WriterGroupConfig(view(lambda s: s.box), Once()),
    }


def run(logger: Logger[MDState], state: MDState, steps: int) -> MDState:
    """Integrate ``steps`` steps, logging every one."""
    with logger:
        for i in range(steps):
            logger.log(state, i)
            state = step(state)
    return state


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--address",
        help="store host:port, a comma list or a dns:/// name (default: TRAJSTORE_ADDRESS)",
    )
    target.add_argument("--local", help="write this local HDF5 file instead")
    parser.add_argument("--run", default="demo/lj", help="run name on the store")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=10, help="log positions every N steps")
    parser.add_argument("--side", type=int, default=6, help="particles per box edge (n = side^3)")
    parser.add_argument("--density", type=float, default=0.8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=["create", "overwrite", "append"], default="overwrite")
    args = parser.parse_args(argv)
    if not args.local:
        args.address = args.address or os.environ.get("TRAJSTORE_ADDRESS")
        if not args.address:
            parser.error("give --address (or TRAJSTORE_ADDRESS) or --local")
    state = initial_state(args.side, args.density, args.temperature, args.seed)
    metadata = {
        "model": "lennard-jones",
        "particles": args.side**3,
        "density": args.density,
        "temperature": args.temperature,
        "seed": args.seed,
        "dt": 0.005,
        "steps": args.steps,
    }
    logger: Logger[MDState]
    if args.local:
        logger = HDF5StorageWriter(
            args.local, config(args.every), state, args.steps, metadata=metadata
        )
    else:
        logger = RemoteStorageWriter(
            args.address,
            args.run,
            config(args.every),
            state,
            args.steps,
            metadata=metadata,
            mode=args.mode,
        )
    final = run(logger, state, args.steps)
    drift = float(final.kinetic + final.potential - (state.kinetic + state.potential))
    where = args.local or f"{args.address}/{args.run}"
    print(
        f"lj_md: {args.side**3} particles, {args.steps} steps -> {where}; "
        f"energy drift {drift / (args.side**3):+.2e} per particle"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

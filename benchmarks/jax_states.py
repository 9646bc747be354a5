"""Workloads that look like simulations: JAX device arrays in a registered dataclass.

Run as a worker: ``python -m benchmarks.jax_states WRITER WORKLOAD TARGET [--scale S]``
prints one JSON line. ``WRITER`` is ``local``, ``remote`` (trajstore),
``seed`` (``kups.core.storage`` 1.0.8, the API trajstore mirrors; run with
the interpreter of a venv that has ``kups``, see :func:`seed_python`) or
``floor`` (:class:`FloorWriter`: the least a ``log()`` can do; ``TARGET``
is ignored).
Views are compiled (``compile_views`` left on), as a kUPS user leaves them.

- ``scalars_groups``: three float32 scalars, one group each, every step;
- ``scalars_one``: the same three scalars as one group;
- ``md``: positions and velocities (10 000, 3) float32 and an energy; the
  positions every 10 steps, the energy every step.

Scalar states are prebuilt and distinct (as many as steps); MD states are 64
prebuilt ones, reused. Compression is off.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

WORKLOADS = ("scalars_groups", "scalars_one", "md")

#: The seed's release on PyPI, and the Python it needs.
SEED_REQUIREMENT = "kups==1.0.8"
SEED_PYTHONS = ("python3.12", "/root/.pyenv/versions/3.12.1/bin/python3.12")


def steps_of(workload: str, scale: float) -> int:
    """Steps of ``workload`` at ``scale`` (1: 20 000 scalar steps, 2 000 MD steps)."""
    return max(int((2_000 if workload == "md" else 20_000) * scale), 20)


def _state_class() -> Any:
    import jax

    @jax.tree_util.register_dataclass
    @dataclass
    class Scalars:
        a: Any
        b: Any
        c: Any

    @jax.tree_util.register_dataclass
    @dataclass
    class MD:
        pos: Any
        vel: Any
        energy: Any

    return Scalars, MD


def states(workload: str, steps: int) -> list[Any]:
    """Prebuilt JAX states (on the default device) for ``workload``."""
    import jax
    import jax.numpy as jnp

    scalars, md = _state_class()
    if workload != "md":
        built = [
            scalars(jnp.float32(i), jnp.float32(i * 0.5), jnp.float32(-i)) for i in range(steps)
        ]
    else:
        rng = np.random.default_rng(0)
        built = []
        for i in range(min(steps, 64)):
            pos = rng.random((10_000, 3), dtype=np.float32)
            built.append(md(jnp.asarray(pos), jnp.asarray(pos * 0.5), jnp.float32(i)))
    jax.block_until_ready(built)
    return built


def config(workload: str, api: Any) -> dict[str, Any]:
    """The logging config, built with ``api`` (``trajstore`` or ``kups.core.storage``)."""
    group, every, view = api.WriterGroupConfig, api.EveryNStep, api.view
    if workload == "scalars_groups":
        return {
            "a": group(view(lambda s: s.a), every(1), compression=None),
            "b": group(view(lambda s: s.b), every(1), compression=None),
            "c": group(view(lambda s: s.c), every(1), compression=None),
        }
    if workload == "scalars_one":
        return {
            "s": group(view(lambda s: {"a": s.a, "b": s.b, "c": s.c}), every(1), compression=None)
        }
    return {
        "traj": group(view(lambda s: {"pos": s.pos}), every(10), compression=None),
        "energy": group(view(lambda s: s.energy), every(1), compression=None),
    }


#: Per workload, each group's state leaves (positions in the flattened
#: state) and logging interval: what the views select, for :class:`FloorWriter`.
FLOOR_PICKS: dict[str, list[tuple[tuple[int, ...], int]]] = {
    "scalars_groups": [((0,), 1), ((1,), 1), ((2,), 1)],
    "scalars_one": [((0, 1, 2), 1)],
    "md": [((0,), 10), ((2,), 1)],
}


class FloorWriter:
    """The least any writer must do in ``log()``; writes nothing.

    Flattens the state, copies the leaves the workload's views select to the
    host, checks their shapes and dtypes against the first state's, and
    appends the frames to a list: no step checks, no views run, no locks,
    no background thread. Its ``log()`` time is the floor a real writer's is
    measured against (``make bench`` prints it beside the writers).
    """

    def __init__(self, workload: str, initial_state: Any) -> None:
        import jax

        self._picks = FLOOR_PICKS[workload]
        leaves, self._treedef = jax.tree_util.tree_flatten(initial_state)
        self._avals = [
            [(leaves[i].shape, np.dtype(leaves[i].dtype)) for i in picks]
            for picks, _ in self._picks
        ]
        self._flatten = jax.tree_util.tree_flatten
        self.frames: list[Any] = []

    def __enter__(self) -> FloorWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.frames.clear()

    def log(self, state: Any, step: int) -> None:
        """Take the frames due at ``step`` (see the class docstring)."""
        leaves, treedef = self._flatten(state)
        if treedef != self._treedef:
            raise ValueError("another structure")
        for (picks, every), avals in zip(self._picks, self._avals, strict=True):
            if step % every:
                continue
            hosts = [np.array(leaves[i]) for i in picks]
            if [(host.shape, host.dtype) for host in hosts] != avals:
                raise ValueError("another shape or dtype")
            self.frames.append((step // every, tuple(hosts)))


def groups_per_step(workload: str) -> float:
    """Groups logged per step on average."""
    return {"scalars_groups": 3.0, "scalars_one": 1.0, "md": 1.1}[workload]


def frame_bytes(workload: str) -> float:
    """Bytes logged per step on average."""
    return 12.0 if workload != "md" else 4 + 120_000 / 10


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(
    writer_kind: str,
    workload: str,
    target: str,
    scale: float,
    extraction: str,
    barrier: bool = False,
) -> dict:
    """Log ``workload`` through ``writer_kind``; time until everything is durable.

    Time runs from the writer's ``__enter__`` (views compiled, run opened) to
    the end of its ``__exit__``. With ``barrier``, the writer prints ``ready``
    once entered and waits for a line on stdin before it logs, so that
    concurrent writers log together; then time (also ``began_at``, wall clock)
    starts after the wait and leaves the opening out.
    """
    steps = steps_of(workload, scale)
    prebuilt = states(workload, steps)
    # The prebuilt states stand in for states a simulation makes and drops
    # step by step; collected now, they are old objects, and their promotion
    # does not trigger a full collection inside the timed loop (every writer).
    gc.collect()
    if writer_kind == "floor":
        writer: Any = FloorWriter(workload, prebuilt[0])
    elif writer_kind == "seed":
        from kups.core import lens, storage

        class _Api:  # kUPS keeps view in kups.core.lens
            WriterGroupConfig = storage.WriterGroupConfig
            EveryNStep = storage.EveryNStep
            view = staticmethod(lens.view)

        writer = storage.HDF5StorageWriter(target, config(workload, _Api), prebuilt[0], steps)
    else:
        import trajstore

        cfg = config(workload, trajstore)
        # Only when asked: the trajstore of a baseline run may not have the option.
        options = {} if extraction == "auto" else {"extraction": extraction}
        if writer_kind == "local":
            writer = trajstore.HDF5StorageWriter(target, cfg, prebuilt[0], steps, **options)
        else:
            address, run_name = target.split("/", 1)
            writer = trajstore.RemoteStorageWriter(
                address, run_name, cfg, prebuilt[0], steps, mode="overwrite", **options
            )
    latencies = np.empty(steps)
    rss_before = _rss_mb()
    began_at = time.time()
    cpu_before = os.times()
    started = time.perf_counter()
    with writer:
        if barrier:  # open (views compiled, run opened): wait for the others
            print("ready", flush=True)
            sys.stdin.readline()
            began_at = time.time()
            cpu_before = os.times()
            started = time.perf_counter()
        for step in range(steps):
            state = prebuilt[step % len(prebuilt)]
            t = time.perf_counter()
            writer.log(state, step)
            latencies[step] = time.perf_counter() - t
    seconds = time.perf_counter() - started
    cpu_after = os.times()
    median = float(np.median(latencies) * 1e6)
    return {
        "steps": steps,
        "seconds": seconds,
        "began_at": began_at,
        "ended_at": time.time(),
        "us_per_step": seconds / steps * 1e6,
        "log_median_us": median,
        "log_p99_us": float(np.percentile(latencies, 99) * 1e6),
        "log_median_us_per_group": median / groups_per_step(workload),
        "cpu_s": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
        "rss_growth_mb": _rss_mb() - rss_before,
        "bytes": steps * frame_bytes(workload),
    }


# ------------------------------------------------------------------ the seed


def _python_312() -> str | None:
    for candidate in SEED_PYTHONS:
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.stdout.strip() == "True":
            return candidate
    return None


def seed_python(cache: Path, *, create: bool = True) -> tuple[str | None, str]:
    """The interpreter of a venv with the seed's ``kups``; or ``None`` and why not.

    The venv lives under ``cache`` and is made once (Python 3.12 and PyPI
    needed), with the JAX, jaxlib and numpy versions of this interpreter
    where pip can have them, so that both writers run on the same JAX.
    """
    venv = cache / "kups-1.0.8"
    python = venv / "bin" / "python"
    if (venv / ".installed").exists():
        return str(python), "cached"
    if not create:
        return None, f"no seed venv at {venv} (made by a full `make bench`)"
    base = _python_312()
    if base is None:
        return None, "no Python 3.12 (the seed's kups needs it)"
    try:
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        import jax
        import jaxlib

        pinned = [f"jax=={jax.__version__}", f"jaxlib=={jaxlib.__version__}"]
        pinned.append(f"numpy=={np.__version__}")
        if subprocess.run([*pip, SEED_REQUIREMENT, *pinned], timeout=900).returncode != 0:
            subprocess.run([*pip, SEED_REQUIREMENT], check=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"could not install {SEED_REQUIREMENT} into {venv}: {e}"
    (venv / ".installed").touch()
    return str(python), "made"


def main() -> int:
    """Worker entry point."""
    parser = argparse.ArgumentParser()
    parser.add_argument("writer", choices=["local", "remote", "seed", "floor"])
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("target", help="a file path, or ADDRESS/RUN for the remote writer")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--extraction", default="auto", help="trajstore writers: auto, ...")
    parser.add_argument(
        "--barrier", action="store_true", help="print 'ready', start on a line from stdin"
    )
    args = parser.parse_args()
    result = run(args.writer, args.workload, args.target, args.scale, args.extraction, args.barrier)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

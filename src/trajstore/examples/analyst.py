r"""An analyst's session against a store: list runs, follow one live, read slices, plot.

It also stacks every run's energies into one xarray Dataset, where xarray is
installed (the ``analysis`` extra).

    python -m trajstore.examples.analyst --address 127.0.0.1:50051 --prefix demo/ \\
        --follow demo/lj-0 --plot energy.png

With ``--verify N --steps S`` it also checks that N runs of the LJ example are
complete (closed, every frame there) and physically sane (energy conserved,
particles inside the box), and exits non-zero otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

from trajstore import connect
from trajstore.client.reader import Client, RunInfo

__all__ = ["main"]


def wait_for_runs(
    client: Client, prefix: str, count: int, timeout: float, created_after: float = 0.0
) -> list[RunInfo]:
    """Wait until ``count`` runs created after ``created_after`` exist under ``prefix``."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in client.list_runs(prefix) if r.created >= created_after]
        if len(runs) >= count or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


def follow(client: Client, run: str) -> int:
    """Follow a run's energies live until its writer closes it; return frames seen."""
    seen = 0
    started = time.monotonic()
    with client.open_run(run) as reader:
        for frame in reader.focus_group("group['energy']").follow(select=lambda e: e["total"]):
            if seen % 500 == 0:
                print(f"  follow {run}: step {seen:5d}  total energy {float(frame):+.4f}")
            seen += 1
    print(f"  follow {run}: {seen} frames live in {time.monotonic() - started:.1f}s; run closed")
    return seen


def summarise(client: Client, run: str) -> dict[str, float]:
    """Read slices of one run and compute a few observables."""
    with client.open_run(run) as reader:
        energy = reader.focus_group("group['energy']").read(slice(None))
        traj = reader.focus_group(lambda c: c["traj"])
        box = np.asarray(reader.focus_group("group['box']")[...])
        first, last = traj[0]["pos"], traj[-1]["pos"]
        displacement = last - first
        displacement -= box * np.round(displacement / box)
        total = energy["total"]
        return {
            "actual_steps": float(reader.actual_steps),
            "frames": float(len(traj)),
            "steps": float(len(total)),
            "mean_total": float(np.mean(total)),
            "drift_per_particle": float((total[-1] - total[0]) / first.shape[0]),
            "temperature": float(
                2 * np.mean(energy["kinetic"][len(total) // 2 :]) / (3 * first.shape[0])
            ),
            "msd_wrapped": float(np.mean(np.sum(displacement**2, axis=-1))),
            "inside_box": float(np.all((last >= 0) & (last <= box))),
            "finite": float(np.all(np.isfinite(total)) and np.all(np.isfinite(last))),
        }


def across_runs(client: Client, runs: list[str]) -> None:
    """Every run's energies as one xarray Dataset, stacked along ``run`` (needs xarray)."""
    try:
        import xarray as xr
    except ImportError:
        print("  xarray: not installed (pip install 'trajstore[analysis]'); skipped")
        return
    readers = [client.open_run(run) for run in runs]
    try:
        energies = [reader.focus_group("energy").to_xarray() for reader in readers]
        if len({e.sizes["frame"] for e in energies}) > 1:
            print("  xarray: the runs differ in length; not stacked")
            return
        stacked = xr.concat(energies, dim=xr.Variable("run", runs), combine_attrs="drop_conflicts")
        mean = stacked.total.mean("frame").values
        print(
            f"  xarray: {stacked.sizes['run']} runs x {stacked.sizes['frame']} steps of "
            f"{', '.join(map(str, stacked.data_vars))}; <E> per run "
            f"{', '.join(f'{value:+.4f}' for value in mean)}"
        )
    finally:
        for reader in readers:
            reader.__exit__(None, None, None)


def plot(client: Client, runs: list[str], path: Path) -> None:
    """Total and potential energy against step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for run in runs:
        with client.open_run(run) as reader:
            energy = reader.focus_group("group['energy']")[:]
        steps = np.arange(len(energy["total"]))
        axes[0].plot(steps, energy["total"], label=run)
        axes[1].plot(steps, energy["potential"], label=run)
    axes[0].set_ylabel("total energy")
    axes[1].set_ylabel("potential energy")
    axes[1].set_xlabel("step")
    axes[0].legend(fontsize="small")
    fig.suptitle("Lennard-Jones runs read back from the store")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=os.environ.get("TRAJSTORE_ADDRESS"))
    parser.add_argument("--prefix", default="demo/")
    parser.add_argument("--follow", help="follow this run live first")
    parser.add_argument("--plot", type=Path, help="write an energy plot (PNG) here")
    parser.add_argument(
        "--verify", type=int, metavar="N", help="require N complete, sane runs under the prefix"
    )
    parser.add_argument("--steps", type=int, default=2000, help="steps each run should have")
    parser.add_argument("--every", type=int, default=10, help="steps between trajectory frames")
    parser.add_argument(
        "--created-after",
        type=float,
        default=0.0,
        metavar="UNIX_TIME",
        help="only runs created after this (older runs of an earlier session are ignored)",
    )
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    if not args.address:
        parser.error("--address (or TRAJSTORE_ADDRESS) is required")
    with connect(args.address) as client:
        expected = args.verify or 1
        runs = wait_for_runs(client, args.prefix, expected, args.timeout, args.created_after)
        print(f"analyst: {len(runs)} run(s) under {args.prefix!r} on {args.address}")
        for info in runs:
            state = "open" if info.open else "closed"
            print(f"  {info.name:24s} {state:6s} {info.frames}  {info.size_bytes / 1e6:.1f} MB")
        if args.follow:
            follow(client, args.follow)
        names = [info.name for info in runs]
        deadline = time.monotonic() + args.timeout
        while any(info.open for info in client.list_runs(args.prefix)):
            if time.monotonic() > deadline:
                print("analyst: runs still open at the deadline", file=sys.stderr)
                return 1
            time.sleep(0.2)
        failures = []
        for name in names:
            s = summarise(client, name)
            print(
                f"  {name}: {s['steps']:.0f} steps, {s['frames']:.0f} frames, <E> "
                f"{s['mean_total']:+.4f}, drift/particle {s['drift_per_particle']:+.2e}, "
                f"T {s['temperature']:.3f}, MSD {s['msd_wrapped']:.3f}"
            )
            if args.verify:
                if s["steps"] != args.steps:
                    failures.append(f"{name}: {s['steps']:.0f} of {args.steps} steps")
                expected_frames = -(-args.steps // args.every)  # steps 0, every, 2 every, ...
                if s["frames"] != expected_frames:
                    failures.append(f"{name}: {s['frames']:.0f} of {expected_frames} frames")
                if s["actual_steps"] != args.steps:
                    failures.append(f"{name}: actual_steps {s['actual_steps']:.0f}")
                if not s["finite"] or not s["inside_box"]:
                    failures.append(f"{name}: non-finite values or particles outside the box")
                if abs(s["drift_per_particle"]) > 1e-2:
                    failures.append(f"{name}: energy drift {s['drift_per_particle']:+.2e}")
        across_runs(client, names)
        if args.verify and len(names) < args.verify:
            failures.append(f"only {len(names)} of {args.verify} runs")
        if args.plot:
            plot(client, names, args.plot)
            print(f"analyst: wrote {args.plot}")
        for failure in failures:
            print(f"analyst: FAILED {failure}", file=sys.stderr)
        print("analyst: all runs complete and sane" if not failures else "analyst: problems found")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

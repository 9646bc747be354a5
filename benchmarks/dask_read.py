"""A whole remote run through dask, against the remote reader: ``python -m benchmarks.dask_read``.

``make bench-dask``. Starts ``trajstore serve`` on port 0, writes the ``md``
workload (``benchmarks.workloads``: positions and velocities of 10 000
atoms, every step, uncompressed) to it once, then reads the whole ``traj``
group back, each way in a fresh process of its own, alternating the order
over ``--repeats`` rounds:

- ``reader``: ``RemoteStorageReader(...).focus_group("traj")[:]`` (the
  baseline: one client, the store's streamed reads);
- ``dask_threads``: ``xr.open_dataset("trajstore://...", chunks={})`` and
  ``.load()`` on dask's threaded scheduler (each task reads whole stored
  chunks, about ``trajstore.xarray_backend.TASK_BYTES``);
- ``dask_processes``: the same graph computed on a ``distributed``
  ``LocalCluster`` of ``--workers`` worker processes (the graph pickled,
  every worker opening the run itself; the cluster's start, its workers'
  imports and dask's first-use costs excluded, as for the threads), the
  arrays gathered into this process;
- ``dask_processes_mean``: the same reads on the cluster, reduced there
  (the mean over frames of ``pos`` and ``vel``), as an analysis would:
  every byte is read, little travels back. Against the reader reading the
  whole group and taking the same means with numpy.

Figures are MB/s of the bytes read (median over the rounds) and each dask
way's ratio to the reader's within its round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.run import ROOT, machine, start_store, worker

WAYS = ("reader", "dask_threads", "dask_processes", "dask_processes_mean")


def read_once(way: str, url: str, workers: int) -> dict[str, float]:
    """Read the whole ``traj`` group one way (in this process); seconds and bytes."""
    import xarray as xr

    address, run = url.removeprefix("trajstore://").split("/", 1)
    if way == "reader":
        from trajstore import RemoteStorageReader

        with RemoteStorageReader(address, run) as reader:
            start_s = time.perf_counter()
            value = reader.focus_group("traj")[:]
            seconds = time.perf_counter() - start_s
            means = [value["pos"].mean(axis=0), value["vel"].mean(axis=0)]
            mean_seconds = time.perf_counter() - start_s
        nbytes = float(sum(v.nbytes for v in value.values()))
        del means
        return {"seconds": seconds, "mean_seconds": mean_seconds, "bytes": nbytes}
    import dask.array as da

    warm_up = da.zeros(4, chunks=2).sum()  # dask's own first-use costs are not the read's
    if way == "dask_threads":
        warm_up.compute(scheduler="threads")
        with xr.open_dataset(url, engine="trajstore", group="traj", chunks={}) as ds:
            start_s = time.perf_counter()
            loaded = ds.load(scheduler="threads")
            seconds = time.perf_counter() - start_s
            nbytes = float(loaded.pos.nbytes + loaded.vel.nbytes)
        return {"seconds": seconds, "bytes": nbytes}
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
        xr.open_dataset(url, engine="trajstore", group="traj", chunks={}) as ds,
    ):
        client.wait_for_workers(workers)
        client.run(lambda: __import__("trajstore.xarray_backend"))  # imports are start-up
        client.compute(warm_up, sync=True)
        nbytes = float(ds.pos.nbytes + ds.vel.nbytes)
        wanted = [ds.pos.data, ds.vel.data]
        if way == "dask_processes_mean":
            wanted = [ds.pos.data.mean(axis=0), ds.vel.data.mean(axis=0)]
        start_s = time.perf_counter()
        client.compute(wanted, sync=True)
        seconds = time.perf_counter() - start_s
    return {"seconds": seconds, "bytes": nbytes}


def main() -> int:
    """Benchmark entry point (also the worker: ``--way``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.25, help="md workload scale")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "dask-results.json")
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        print(json.dumps(read_once(args.way, args.url, args.workers)), flush=True)
        return 0
    data = Path(tempfile.mkdtemp(prefix="trajstore-bench-dask-"))
    store, address = start_store(data)
    rounds: list[dict[str, dict[str, float]]] = []
    try:
        worker("remote", "md", f"{address}/bench/dask", "--scale", str(args.scale))
        url = f"trajstore://{address}/bench/dask"
        for repeat in range(args.repeats):
            order = WAYS if repeat % 2 == 0 else tuple(reversed(WAYS))
            rounds.append(
                {
                    way: worker(
                        "--way",
                        way,
                        "--url",
                        url,
                        "--workers",
                        str(args.workers),
                        module="benchmarks.dask_read",
                    )
                    for way in order
                }
            )
    finally:
        store.send_signal(signal.SIGTERM)
        store.wait(60)
        shutil.rmtree(data, ignore_errors=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "scale": args.scale,
        "repeats": args.repeats,
        "workers": args.workers,
        "bytes": rounds[0]["reader"]["bytes"],
    }
    for way in WAYS:
        speeds = [r[way]["bytes"] / r[way]["seconds"] / 1e6 for r in rounds]
        results[way] = {"mb_s": statistics.median(speeds), "mb_s_all": speeds}
        if way != "reader":
            base = "mean_seconds" if way.endswith("_mean") else "seconds"
            ratios = [r["reader"][base] / r[way]["seconds"] for r in rounds]
            results[f"{way}_vs_reader"] = statistics.median(ratios)
            results[f"{way}_vs_reader_all"] = ratios
    print(f"whole remote run: {results['bytes'] / 1e6:.0f} MB of traj (pos, vel)")
    for way in WAYS:
        ratio = results.get(f"{way}_vs_reader")
        speed = f"{results[way]['mb_s']:8.0f} MB/s"
        print(f"  {way:20s}{speed}" + ("" if ratio is None else f"   {ratio:.2f}x the reader"))
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

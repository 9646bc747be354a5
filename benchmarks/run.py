"""Run the benchmarks: ``make bench`` or ``python -m benchmarks.run [--quick]``.

Every figure is a median over interleaved repeats, reported with its baseline
measured in the same run on the same machine: the local HDF5StorageWriter,
plain h5py block writes, and a bare gRPC byte stream on loopback. Writers run
in their own processes; the store runs in another one.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.grpc_baseline import pull, push, round_trip, stream_round_trip
from benchmarks.jax_states import WORKLOADS as JAX_WORKLOADS
from benchmarks.jax_states import seed_python
from benchmarks.workloads import workload
from trajstore.server.launch import spawn_store

ROOT = Path(__file__).resolve().parents[1]

#: What ``--only`` can pick: numpy writers (with the bare gRPC stream), the
#: JAX-state workloads beside the seed, fan-in, and reads.
SECTIONS = ("writers", "jax_states", "fan_in", "reads")


def quiet_disk() -> None:
    """Write back what earlier runs left dirty, so that no run pays for another's writes."""
    os.sync()


def worker(
    *args: str, module: str = "benchmarks.workloads", python: str = sys.executable
) -> dict[str, Any]:
    """Run one measured writer (or reader) in its own process, on a quiet disk."""
    quiet_disk()
    out = subprocess.run(
        [python, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def reader(*args: str) -> dict[str, Any]:
    """Run one measured reader in its own process."""
    return worker(*args, module="benchmarks.readers")


def start(command: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``command``; the process and the first line it prints."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline() if process.stdout else ""
    return process, line.strip()


def start_store(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """``trajstore serve`` on loopback port 0 keeping runs in ``data_dir``; it and its address."""
    return spawn_store(data_dir, cwd=ROOT)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds that process ``pid`` has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def writers(
    store: int,
    address: str,
    data: Path,
    name: str,
    scale: float,
    repeats: int,
    zstd: bool = False,
) -> dict[str, Any]:
    """Local, remote and raw h5py writers on one workload, interleaved.

    Remote rows also count the CPU the store (process ``store``) used.
    """
    extra = ["--scale", str(scale)] + (["--zstd"] if zstd else [])
    rows: dict[str, list[dict[str, Any]]] = {"local": [], "remote": [], "h5py": []}
    for _ in range(repeats):
        rows["local"].append(worker("local", name, str(data / f"local-{name}.h5"), *extra))
        before = cpu_seconds(store)
        remote = worker("remote", name, f"{address}/bench/{name}", *extra)
        rows["remote"].append({**remote, "store_cpu_s": cpu_seconds(store) - before})
        if not zstd:
            rows["h5py"].append(worker("h5py", name, str(data / f"h5py-{name}.h5"), *extra))
    load = workload(name, scale)
    result: dict[str, Any] = {"steps": load.steps, "bytes": rows["local"][0]["bytes"]}
    for kind, measured in rows.items():
        if measured:
            result[kind] = {key: median(measured, key) for key in measured[0]}
    result["remote_vs_local"] = result["local"]["seconds"] / result["remote"]["seconds"]
    return result


def fan_in_round(
    address: str,
    run_prefix: str,
    scale: float,
    clients: int,
    workload_command: tuple[str, ...] = ("benchmarks.workloads", "remote", "md"),
    on_start: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """One fan-in: ``clients`` remote writers started together; each one's JSON result.

    ``workload_command`` is the worker module and its arguments before the
    target (its results need ``bytes``, ``began_at`` and ``ended_at``). The
    writers import and set up first, print ``ready``, and start logging
    together on a line from stdin; ``on_start`` runs just before that line is
    sent (to read counters at the start).
    """
    quiet_disk()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                *workload_command,
                f"{address}/{run_prefix}-{i}",
                "--scale",
                str(scale),
                "--barrier",
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(clients)
    ]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a fan-in writer failed to start")
    if on_start is not None:
        on_start()
    for p in procs:  # all at once
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.close()
    outs = []
    for p in procs:
        assert p.stdout is not None
        outs.append(json.loads(p.stdout.read().strip().splitlines()[-1]))
        if p.wait(3600) != 0:
            raise RuntimeError(f"a fan-in writer exited with {p.returncode}")
    return outs


def aggregate_bytes_per_second(outs: list[dict[str, Any]]) -> float:
    """The writers' bytes over the time from the first start to the last end."""
    wall = max(o["ended_at"] for o in outs) - min(o["began_at"] for o in outs)
    return sum(o["bytes"] for o in outs) / wall


def _fan_in_once(address: str, run_prefix: str, scale: float, clients: int) -> float:
    """One fan-in: ``clients`` remote MD writers started together; their aggregate bytes/s."""
    return aggregate_bytes_per_second(fan_in_round(address, run_prefix, scale, clients))


def fan_in(address: str, data: Path, scale: float, clients: int, repeats: int) -> dict[str, Any]:
    """``clients`` MD writers at once against one local writer's throughput.

    The writers import and set up first; they start logging together, and
    the aggregate is their bytes over the time from the first start to the
    last end (process start-up is not counted). One local writer and one
    fan-in alternate ``repeats`` times; both figures are medians.
    """
    singles, aggregates = [], []
    for r in range(repeats):
        local = worker("local", "md", str(data / f"fan-local-{r}.h5"), "--scale", str(scale))
        singles.append(local["bytes"] / local["seconds"])
        # Every round overwrites the same runs: gigabytes of earlier rounds' files
        # left in the page cache made later rounds pay for reclaiming it (on
        # this machine 450 -> 215 MB/s from the fourth round on, and back to
        # 476 MB/s with them deleted).
        aggregates.append(_fan_in_once(address, "bench/fan", scale, clients))
    single = statistics.median(singles)
    aggregate = statistics.median(aggregates)
    return {
        "clients": clients,
        "aggregate_mb_s": aggregate / 1e6,
        "local_single_mb_s": single / 1e6,
        "ratio": aggregate / single,
        "aggregate_runs_mb_s": [a / 1e6 for a in aggregates],
        "local_single_runs_mb_s": [s / 1e6 for s in singles],
    }


#: The JAX-state writers of every round: (column, writer, extraction).
JAX_WRITERS = (
    ("local", "local", "auto"),
    ("remote", "remote", "auto"),
    ("seed", "seed", "auto"),
    ("floor", "floor", "auto"),  # the least a log() can do (benchmarks.jax_states.FloorWriter)
)
#: MD also runs per-group extraction (the path before issue 18's fused one).
JAX_MD_PER_GROUP = (
    ("local_per_group", "local", "per_group"),
    ("remote_per_group", "remote", "per_group"),
)


def jax_states(
    address: str, data: Path, scale: float, repeats: int, seed: str | None
) -> dict[str, Any]:
    """JAX-state workloads (``benchmarks/jax_states.py``): local, remote and the seed's writer.

    Each round runs every writer once on each workload, in turn; ratios
    (the seed's time over ours) are taken within a round, then the median.
    Without ``seed`` (the interpreter of a venv with ``kups``) the seed's
    column is left out.
    """
    out: dict[str, Any] = {}
    for name in JAX_WORKLOADS:
        writers_of = list(JAX_WRITERS) + (list(JAX_MD_PER_GROUP) if name == "md" else [])
        if seed is None:
            writers_of = [w for w in writers_of if w[1] != "seed"]
        rows: dict[str, list[dict[str, Any]]] = {column: [] for column, _, _ in writers_of}
        for number in range(repeats):
            order = writers_of if number % 2 == 0 else writers_of[::-1]
            for column, kind, extraction in order:
                target = (
                    f"{address}/bench/jax-{name}"
                    if kind == "remote"
                    else str(data / f"jax-{kind}-{name}.h5")
                )
                options = ["--scale", str(scale)]
                if extraction != "auto":
                    options += ["--extraction", extraction]
                rows[column].append(
                    worker(
                        kind,
                        name,
                        target,
                        *options,
                        module="benchmarks.jax_states",
                        python=seed if kind == "seed" else sys.executable,
                    )
                )
        result: dict[str, Any] = {
            column: {key: median(measured, key) for key in measured[0]}
            for column, measured in rows.items()
        }
        for column in rows:
            if column in ("seed", "floor") or "seed" not in rows:
                continue
            ratios = [
                s["seconds"] / ours["seconds"]
                for s, ours in zip(rows["seed"], rows[column], strict=True)
            ]
            result[f"{column}_speedup_vs_seed"] = statistics.median(ratios)
            result[f"{column}_speedup_vs_seed_range"] = [min(ratios), max(ratios)]
        for kind in ("local", "remote"):
            if f"{kind}_per_group" in rows:
                ratios = [
                    before["seconds"] / now["seconds"]
                    for before, now in zip(rows[f"{kind}_per_group"], rows[kind], strict=True)
                ]
                result[f"{kind}_speedup_vs_per_group"] = statistics.median(ratios)
                result[f"{kind}_speedup_vs_per_group_range"] = [min(ratios), max(ratios)]
        out[name] = result
    return out


def reads(address: str, data: Path, run: str, samples: int, bare: str) -> dict[str, Any]:
    """Remote reads against local reads of the same file, each reader a process of its own.

    Also the same amounts of bytes through bare gRPC calls to ``bare``
    (the limits of the wire): the whole dataset streamed in messages as large
    as the store's, and one frame's bytes as the reply of a unary call and
    as a reply on an open stream.
    """
    from trajstore import HDF5StorageReader

    path = data / f"{run}.h5"
    with HDF5StorageReader(path) as warm:  # both read from the page cache: the harder case
        pos = warm.focus_group("group['traj']").read(slice(None), select=lambda s: s["pos"])
    common = ["--samples", str(samples)]
    out: dict[str, Any] = {
        "local": reader("local", str(path), *common),
        "remote": reader("remote", f"{address}/{run}", *common),
        "remote_keep_large_buffers": reader(
            "remote", f"{address}/{run}", *common, "--keep-large-buffers"
        ),
    }
    whole, frame = pos.nbytes, pos[0].nbytes
    out["bare_grpc"] = {
        "whole_mb_s": whole / pull(bare, whole, min(whole, 16 << 20)) / 1e6,
        "frame_round_trip_ms": round_trip(bare, frame, samples) * 1e3,
        "frame_stream_round_trip_ms": stream_round_trip(bare, frame, samples) * 1e3,
        "frame_bytes": frame,
    }
    local = out["local"]["whole_mb_s"]
    out["whole_remote_vs_local"] = out["remote"]["whole_mb_s"] / local
    # Against the floors of the wire, which move less with the page cache than local reads.
    out["whole_remote_vs_bare"] = out["remote"]["whole_mb_s"] / out["bare_grpc"]["whole_mb_s"]
    out["frame_remote_vs_bare_stream"] = (
        out["remote"]["random_frame_median_ms"] / out["bare_grpc"]["frame_stream_round_trip_ms"]
    )
    out["whole_remote_keep_large_buffers_vs_local"] = (
        out["remote_keep_large_buffers"]["whole_mb_s"] / local
    )
    return out


def machine() -> dict[str, Any]:
    import grpc
    import h5py

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "grpc": grpc.__version__,
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "workload        local MB/s  remote MB/s  h5py MB/s  remote/local  "
        "log() median/p99 us (remote)  client RSS +MB"
    ]
    for name in ("md", "md_zstd", "scalars", "big"):
        r = results.get(name)
        if not r:
            continue
        mb = r["bytes"] / 1e6
        h5 = f"{mb / r['h5py']['seconds']:9.0f}" if "h5py" in r else "        -"
        lines.append(
            f"{name:14s} {mb / r['local']['seconds']:11.0f} {mb / r['remote']['seconds']:12.0f} "
            f"{h5}  {r['remote_vs_local']:11.2f}x  {r['remote']['log_median_us']:9.0f} / "
            f"{r['remote']['log_p99_us']:<9.0f}          {r['remote']['rss_growth_mb']:6.0f}"
        )
    lines.append("CPU seconds (user + system): local writer | remote client + store")
    for name in ("md", "md_zstd", "scalars", "big"):
        r = results.get(name)
        if not r:
            continue
        local, remote = r["local"], r["remote"]
        client = remote["cpu_user_s"] + remote["cpu_system_s"]
        lines.append(
            f"  {name:12s} {local['cpu_user_s'] + local['cpu_system_s']:6.2f} | "
            f"{client:.2f} + {remote['store_cpu_s']:.2f} = {client + remote['store_cpu_s']:.2f}"
        )
    if "scalars" in results:
        r = results["scalars"]
        lines.append(
            f"scalars: remote {r['steps'] / r['remote']['seconds']:.0f} steps/s, "
            f"local {r['steps'] / r['local']['seconds']:.0f} steps/s"
        )
    if "jax_states" in results:
        lines.extend(jax_table(results["jax_states"]))
    if "grpc" in results:
        g = results["grpc"]
        lines.append(f"bare gRPC stream: {g['mb_s_1mib']:.0f} MB/s at 1 MiB messages")
    if "fan_in" in results:
        f = results["fan_in"]
        lines.append(
            f"fan-in: {f['clients']} MD writers {f['aggregate_mb_s']:.0f} MB/s together "
            f"= {f['ratio']:.2f}x one local writer ({f['local_single_mb_s']:.0f} MB/s)"
        )
    if "reads" in results:
        r = results["reads"]
        lines.append(
            f"reads: whole dataset remote {r['remote']['whole_mb_s']:.0f} MB/s vs local "
            f"{r['local']['whole_mb_s']:.0f} MB/s ({r['whole_remote_vs_local']:.2f}x); random "
            f"frame median remote {r['remote']['random_frame_median_ms']:.2f} ms, local "
            f"{r['local']['random_frame_median_ms']:.2f} ms; chunked remote "
            f"{r['remote']['chunked_mb_s']:.0f} MB/s, local {r['local']['chunked_mb_s']:.0f} MB/s"
        )
        tuned = r["remote_keep_large_buffers"]
        lines.append(
            f"reads after keep_large_buffers(): whole dataset remote "
            f"{tuned['whole_mb_s']:.0f} MB/s "
            f"({r['whole_remote_keep_large_buffers_vs_local']:.2f}x), random frame "
            f"{tuned['random_frame_median_ms']:.2f} ms, chunked {tuned['chunked_mb_s']:.0f} MB/s"
        )
        bare = r["bare_grpc"]
        lines.append(
            f"bare gRPC, the same bytes: whole dataset streamed {bare['whole_mb_s']:.0f} MB/s, "
            f"one frame ({bare['frame_bytes'] / 1e3:.0f} KB) as a unary reply "
            f"{bare['frame_round_trip_ms']:.2f} ms, as a reply on an open stream "
            f"{bare['frame_stream_round_trip_ms']:.2f} ms; remote whole read "
            f"{r['whole_remote_vs_bare']:.2f}x of the bare stream, remote frame "
            f"{r['frame_remote_vs_bare_stream']:.2f}x the bare stream's time"
        )
    return "\n".join(lines)


def jax_table(jax_results: dict[str, Any]) -> list[str]:
    """The JAX-state workloads' lines of :func:`table`."""
    lines = [
        "JAX states (registered dataclass of jax arrays), us per step "
        "(log() median per group) and the seed's time over ours (min-max):",
        f"  seed writer: {jax_results['seed_writer']}",
        "  floor: the least a log() can do (flatten, host copies, checks; nothing written)",
    ]
    for name in JAX_WORKLOADS:
        r = jax_results.get(name)
        if not r:
            continue
        cells = []
        for column in (
            "local",
            "remote",
            "seed",
            "floor",
            "local_per_group",
            "remote_per_group",
        ):
            if column not in r:
                continue
            cell = (
                f"{column} {r[column]['us_per_step']:.1f} "
                f"({r[column]['log_median_us_per_group']:.1f})"
            )
            if f"{column}_speedup_vs_seed" in r:
                low, high = r[f"{column}_speedup_vs_seed_range"]
                cell += f" {r[f'{column}_speedup_vs_seed']:.2f}x ({low:.2f}-{high:.2f})"
            cells.append(cell)
        lines.append(f"  {name:15s}" + "; ".join(cells))
        for kind in ("local", "remote"):
            if f"{kind}_speedup_vs_per_group" in r:
                low, high = r[f"{kind}_speedup_vs_per_group_range"]
                lines.append(
                    f"  {'':15s}{kind}: per-group time over fused "
                    f"{r[f'{kind}_speedup_vs_per_group']:.2f}x ({low:.2f}-{high:.2f})"
                )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="shrink workloads (1: full)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny workloads, one repeat")
    parser.add_argument(
        "--json",
        type=Path,
        help="where to write the results (default benchmarks/results.json, "
        "or results-SECTION.json with --only)",
    )
    parser.add_argument(
        "--no-seed", action="store_true", help="leave out the seed's writer (kups 1.0.8)"
    )
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        action="append",
        help="run only this section (repeatable; default: all)",
    )
    args = parser.parse_args()
    sections = set(args.only or SECTIONS)
    if args.json is None:
        suffix = "" if sections == set(SECTIONS) else "-" + "-".join(sorted(sections))
        args.json = ROOT / "benchmarks" / f"results{suffix}.json"
    scale, repeats = (0.02, 1) if args.quick else (args.scale, args.repeats)
    data = Path(tempfile.mkdtemp(prefix="trajstore-bench-"))
    store, address = start_store(data / "store")
    sink, port = start([sys.executable, "-m", "benchmarks.grpc_baseline", "serve"])
    results: dict[str, Any] = {"machine": machine(), "scale": scale, "repeats": repeats}
    try:
        measure = functools.partial(writers, store.pid, address, data)
        if "writers" in sections:
            results["md"] = measure("md", scale, repeats)
            results["md_zstd"] = measure("md", scale, repeats, zstd=True)
            results["scalars"] = measure("scalars", scale, repeats)
            results["big"] = measure("big", scale, repeats)
            total = results["md"]["bytes"]
            results["grpc"] = {"mb_s_1mib": total / push(f"127.0.0.1:{port}", total, 1 << 20) / 1e6}
        if "jax_states" in sections:
            if args.no_seed:
                seed, why = None, "--no-seed"
            else:  # made once under .venv-seed/ (Python 3.12 and PyPI); --quick only uses it
                seed, why = seed_python(ROOT / ".venv-seed", create=not args.quick)
            results["jax_states"] = jax_states(address, data, scale, repeats, seed)
            results["jax_states"]["seed_writer"] = (
                f"kups 1.0.8 ({seed}, {why})" if seed else f"left out: {why}"
            )
        if "fan_in" in sections:
            results["fan_in"] = fan_in(address, data, scale / 2, 8, repeats)
        if "reads" in sections:
            worker("remote", "md", f"{address}/bench/read", "--scale", str(scale))
            results["reads"] = reads(
                address,
                data / "store",
                "bench/read",
                samples=50 if args.quick else 200,
                bare=f"127.0.0.1:{port}",
            )
    finally:
        sink.kill()
        store.send_signal(signal.SIGTERM)
        store.wait(60)
        shutil.rmtree(data, ignore_errors=True)  # gigabytes of benchmark runs
    print(table(results))
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fan-in against several store processes on one host: ``python -m benchmarks.cluster``.

``make bench-cluster``. For each N of ``--processes`` (default 1, 2, 4) it
starts ``trajstore serve --processes N`` on port 0 in a fresh data directory,
runs ``--writers`` remote writer processes at once against the printed
address list (each run routed to one store process by a hash of its name),
stops the store and deletes its data. The rounds alternate the N values
(reversed every other round, so that no N always runs first) and repeat
``--repeats`` times; figures are medians, with their spread.

Per round it records:

- the aggregate throughput: the writers' bytes over the time from the first
  writer's start to the last one's end (the writers import and set up
  first, then start together: ``benchmarks.run.fan_in_round``);
- the store's CPU seconds (user + system from ``/proc/PID/stat``, before and
  after the writing) of the supervisor and of every store process it runs
  (``pgrep -P``), per MB written; and the writers' own CPU per MB;
- the share of the machine's CPU time that was idle meanwhile (``/proc/stat``).

Ratios are taken within a round, against the first N of the list measured
in that round, so that a machine that slows down between rounds moves both.
Workloads: ``md`` (``benchmarks.workloads``: positions and velocities of
10 000 atoms and an energy, every step, numpy states), or ``jax_md``
(``benchmarks.jax_states``: JAX states, positions every 10 steps, the energy
every step; small messages, so it measures per-step costs more than bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.run import ROOT, aggregate_bytes_per_second, cpu_seconds, fan_in_round, machine
from trajstore.server.launch import spawn_store

#: Worker command (module and arguments before the target) of each workload.
WORKLOADS: dict[str, tuple[str, ...]] = {
    "md": ("benchmarks.workloads", "remote", "md"),
    "jax_md": ("benchmarks.jax_states", "remote", "md"),
}


class StoreProcesses:
    """``trajstore serve --processes N`` on loopback port 0, in a data directory of its own."""

    def __init__(self, count: int, data_dir: Path) -> None:
        self.count = count
        self.data_dir = data_dir
        self.process, self.address = spawn_store(data_dir, "--processes", str(count), cwd=ROOT)

    def pids(self) -> list[int]:
        """The supervisor (or the single store) and every process it started."""
        children = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        return [self.process.pid, *(int(pid) for pid in children)]

    def cpu_seconds(self) -> dict[int, float]:
        """User + system CPU seconds so far of each of :meth:`pids`."""
        return {pid: cpu_seconds(pid) for pid in self.pids()}

    def stop(self) -> None:
        """SIGTERM (each store drains and flushes), then delete the data."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _cpu_times() -> tuple[int, int]:
    """Idle and total jiffies of the whole machine so far (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait


def _client_cpu(out: dict[str, Any]) -> float:
    if "cpu_s" in out:  # benchmarks.jax_states
        return float(out["cpu_s"])
    return float(out["cpu_user_s"] + out["cpu_system_s"])


def measure_round(
    count: int, writers: int, scale: float, workload: str, scratch: Path
) -> dict[str, Any]:
    """One fan-in of ``writers`` writers against ``count`` fresh store processes."""
    store = StoreProcesses(count, Path(tempfile.mkdtemp(prefix=f"n{count}-", dir=scratch)))
    before: dict[str, Any] = {}

    def at_start() -> None:
        before["store"] = store.cpu_seconds()
        before["machine"] = _cpu_times()

    try:
        outs = fan_in_round(
            store.address, "bench/cluster", scale, writers, WORKLOADS[workload], at_start
        )
        after = store.cpu_seconds()
        idle, total = _cpu_times()
    finally:
        store.stop()
    if set(after) != set(before["store"]):
        raise RuntimeError(f"store processes changed during the round: {before} -> {after}")
    megabytes = sum(o["bytes"] for o in outs) / 1e6
    store_cpu = sum(after[pid] - before["store"][pid] for pid in after)
    client_cpu = sum(_client_cpu(o) for o in outs)
    idle_before, total_before = before["machine"]
    return {
        "processes": count,
        "aggregate_mb_s": aggregate_bytes_per_second(outs) / 1e6,
        "megabytes": megabytes,
        "store_cpu_s": store_cpu,
        "store_cpu_ms_per_mb": store_cpu / megabytes * 1e3,
        "client_cpu_ms_per_mb": client_cpu / megabytes * 1e3,
        "machine_idle": (idle - idle_before) / max(total - total_before, 1),
    }


def summarize(rounds: list[list[dict[str, Any]]], counts: list[int]) -> dict[str, Any]:
    """Medians (and min, max) per N; throughput ratios against ``counts[0]`` within each round."""
    base = counts[0]
    summary: dict[str, Any] = {}
    for count in counts:
        rows = [r for measured in rounds for r in measured if r["processes"] == count]
        entry: dict[str, Any] = {}
        for key in (
            "aggregate_mb_s",
            "store_cpu_ms_per_mb",
            "client_cpu_ms_per_mb",
            "machine_idle",
        ):
            values = [r[key] for r in rows]
            entry[key] = statistics.median(values)
            entry[f"{key}_range"] = [min(values), max(values)]
        ratios = []
        for measured in rounds:
            by_count = {r["processes"]: r for r in measured}
            ratios.append(by_count[count]["aggregate_mb_s"] / by_count[base]["aggregate_mb_s"])
        entry[f"throughput_vs_{base}"] = statistics.median(ratios)
        entry[f"throughput_vs_{base}_range"] = [min(ratios), max(ratios)]
        summary[str(count)] = entry
    return summary


def conditions() -> dict[str, Any]:
    """What the machine is and how busy it was when the run started."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        **machine(),
        "cpu_model": model or platform.processor(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "loadavg": os.getloadavg(),
    }


def table(results: dict[str, Any]) -> str:
    """The summary as text."""
    base = results["processes"][0]
    lines = [
        f"{results['writers']} {results['workload']} writers, scale {results['scale']}, "
        f"{results['repeats']} rounds; store processes N:",
        f"   N  aggregate MB/s (min-max)   vs N={base} (min-max)   store CPU ms/MB   "
        "writers' CPU ms/MB   machine idle",
    ]
    for count in results["processes"]:
        s = results["summary"][str(count)]
        low, high = s["aggregate_mb_s_range"]
        ratio_low, ratio_high = s[f"throughput_vs_{base}_range"]
        lines.append(
            f"{count:4d}  {s['aggregate_mb_s']:6.0f} ({low:.0f}-{high:.0f})"
            f"{'':>10}{s[f'throughput_vs_{base}']:5.2f}x ({ratio_low:.2f}-{ratio_high:.2f})"
            f"{s['store_cpu_ms_per_mb']:14.2f}{s['client_cpu_ms_per_mb']:19.2f}"
            f"{s['machine_idle']:15.0%}"
        )
    return "\n".join(lines)


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8, help="writer processes at once")
    parser.add_argument(
        "--processes",
        default="1,2,4",
        help="comma list of store process counts (ratios are against the first)",
    )
    parser.add_argument(
        "--scale", type=float, default=0.5, help="each writer's workload (md: 0.5 = 1 000 steps)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds over every N")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="md")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "cluster-results.json")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    results: dict[str, Any] = {
        "machine": conditions(),
        "writers": args.writers,
        "processes": counts,
        "scale": args.scale,
        "repeats": args.repeats,
        "workload": args.workload,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    scratch = Path(tempfile.mkdtemp(prefix="trajstore-cluster-"))
    rounds: list[list[dict[str, Any]]] = []
    try:
        for number in range(args.repeats):
            order = counts if number % 2 == 0 else counts[::-1]
            measured = []
            for count in order:
                row = measure_round(count, args.writers, args.scale, args.workload, scratch)
                print(
                    f"round {number + 1}, N={count}: {row['aggregate_mb_s']:.0f} MB/s, "
                    f"store {row['store_cpu_ms_per_mb']:.2f} ms CPU/MB, "
                    f"idle {row['machine_idle']:.0%}",
                    flush=True,
                )
                measured.append(row)
            rounds.append(measured)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["rounds"] = rounds
    results["summary"] = summarize(rounds, counts)
    results["machine"]["loadavg_after"] = os.getloadavg()
    print(table(results))
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

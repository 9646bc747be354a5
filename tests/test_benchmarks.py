"""The benchmark suite keeps running (tiny workloads; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_run_reports_every_figure(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    for name in ("md", "md_zstd", "scalars", "big"):
        assert {"local", "remote", "remote_vs_local", "bytes"} <= set(results[name])
        remote = results[name]["remote"]
        assert {"rss_growth_mb", "log_median_us", "log_p99_us"} <= set(remote), remote
        assert 0 < remote["log_median_us"] <= remote["log_p99_us"]
    assert {"h5py"} <= set(results["md"])
    assert results["grpc"]["mb_s_1mib"] > 0
    assert results["fan_in"]["clients"] == 8
    for reader in ("local", "remote", "remote_keep_large_buffers"):
        assert {"whole_mb_s", "random_frame_median_ms", "chunked_mb_s"} <= set(
            results["reads"][reader]
        )
        assert results["reads"][reader]["whole_mb_s"] > 0
    assert results["reads"]["whole_remote_vs_bare"] > 0
    assert results["reads"]["frame_remote_vs_bare_stream"] > 0
    assert "remote/local" in result.stdout
    jax_results = results["jax_states"]
    assert jax_results["seed_writer"]  # the seed's kups, or why it was left out
    for name in ("scalars_groups", "scalars_one", "md"):
        for writer in ("local", "remote"):
            figures = jax_results[name][writer]
            assert {"us_per_step", "log_median_us_per_group", "cpu_s"} <= set(figures)
            assert figures["us_per_step"] > 0
    assert jax_results["md"]["remote_speedup_vs_per_group"] > 0
    assert jax_results["scalars_one"]["floor"]["log_median_us_per_group"] > 0
    if "seed" in jax_results["scalars_groups"]:
        assert jax_results["scalars_groups"]["local_speedup_vs_seed"] > 0


def test_cluster_benchmark_reports_every_figure(tmp_path):
    out = tmp_path / "cluster.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.cluster",
            "--writers",
            "2",
            "--processes",
            "1,2",
            "--scale",
            "0.01",
            "--repeats",
            "2",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["processes"] == [1, 2]
    assert [[row["processes"] for row in r] for r in results["rounds"]] == [[1, 2], [2, 1]]
    for count in ("1", "2"):
        summary = results["summary"][count]
        assert summary["aggregate_mb_s"] > 0
        assert summary["store_cpu_ms_per_mb"] > 0
        assert summary["throughput_vs_1"] > 0
    assert results["summary"]["1"]["throughput_vs_1"] == 1.0
    assert "vs N=1" in result.stdout


def test_the_dask_read_benchmark_reports_every_way(tmp_path):
    out = tmp_path / "dask.json"
    command = [sys.executable, "-m", "benchmarks.dask_read", "--scale", "0.005", "--repeats", "1"]
    result = subprocess.run(
        [*command, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    for way in ("reader", "dask_threads", "dask_processes", "dask_processes_mean"):
        assert results[way]["mb_s"] > 0
    for way in ("dask_threads", "dask_processes", "dask_processes_mean"):
        assert results[f"{way}_vs_reader"] > 0
    assert "x the reader" in result.stdout

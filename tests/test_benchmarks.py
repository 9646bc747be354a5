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

"""The checked-in gRPC code is exactly what scripts/gen_protos.py makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_fresh(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh = {p.name: p.read_text() for p in (tmp_path / "trajstore" / "v1").iterdir()}
    checked_in = {
        p.name: p.read_text() for p in (ROOT / "src" / "trajstore" / "v1").iterdir() if p.is_file()
    }
    assert sorted(fresh) == sorted(checked_in), "run: python scripts/gen_protos.py"
    for name, text in fresh.items():
        assert checked_in[name] == text, f"{name} is stale: run python scripts/gen_protos.py"

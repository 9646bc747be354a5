"""The README's main command keeps working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_local_quickstart_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "local_quickstart.py"), str(tmp_path / "q.h5")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "100 trajectory frames, 1000 energies" in result.stdout
    assert (tmp_path / "q.h5").exists()

"""House rules that are cheap to check mechanically."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "trajstore"


def source_files():
    return sorted(SRC.rglob("*.py"))


def test_no_pickle_eval_or_exec_in_the_library():
    forbidden = re.compile(
        r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|marshal)\b|"
        r"\b(eval|exec)\(|__import__\(|import_module\("
    )
    hits = []
    for path in source_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if forbidden.search(line) and "allowed-import: fixed names" not in line:
                hits.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert hits == []


def test_no_assert_in_the_library():
    hits = [
        f"{path.name}:{n}"
        for path in source_files()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.match(r"\s*assert\s", line)
    ]
    assert hits == []


def test_the_hdf5_core_does_not_import_jax():
    code = (
        "import sys, numpy as np, trajstore.store, trajstore.schema, trajstore.errors\n"
        "from trajstore.store.reader import RunFileReader\n"
        "assert not any(m == 'jax' or m.startswith('jax.') for m in sys.modules), 'jax loaded'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_public_api_is_complete():
    import trajstore

    expected = {
        "Logger",
        "LoggingFrequency",
        "Once",
        "EveryNStep",
        "Compression",
        "WriterGroupConfig",
        "HDF5StorageWriter",
        "HDF5StorageReader",
        "GroupReader",
        "BackgroundWriter",
        "Hdf5ObjWriter",
        "GroupWriters",
        "view",
        "TrajstoreError",
    }
    assert expected <= set(trajstore.__all__)
    for name in trajstore.__all__:
        assert getattr(trajstore, name) is not None

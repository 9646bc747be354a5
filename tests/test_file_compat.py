"""Files open in plain h5py and in Debian bookworm's h5dump (HDF5 1.10)."""

from __future__ import annotations

import os
import shutil
import subprocess

import h5py
import hdf5plugin
import numpy as np
import pytest

from trajstore import Compression, EveryNStep, HDF5StorageWriter, Once, WriterGroupConfig, view

from helpers import advance, md_config, md_state

H5DUMP = shutil.which("h5dump")
needs_h5dump = pytest.mark.skipif(
    H5DUMP is None and not os.environ.get("CI"),
    reason="h5dump not installed (make system-deps installs Debian's hdf5-tools)",
)


def write_everything(path, compression):
    rng = np.random.default_rng(1)
    state = {
        **md_state(),
        "flags": rng.random(5) > 0.5,
        "z": (rng.random(3) + 1j).astype(np.complex64),
        "count": np.int64(3),
        "empty": np.zeros((0, 2), np.float32),
    }
    config = {
        **md_config(every=1, compression=compression),
        "misc": WriterGroupConfig(
            view(lambda s: {"flags": s["flags"], "z": s["z"], "empty": s["empty"]}),
            EveryNStep(3),
            compression=compression,
        ),
        "count": WriterGroupConfig(view(lambda s: s["count"]), Once(), compression=compression),
    }
    with HDF5StorageWriter(path, config, state, 50, compile_views=False, metadata={"a": 1}) as w:
        for step in range(50):
            state = {**state, **advance(state, step)}
            w.log(state, step)
            if step % 7 == 0:
                w.flush()  # leaves partly filled chunks behind, stored uncompressed
    return state


CODECS = [None, Compression("gzip", 5), Compression("zstd", 3), Compression("lzf")]


@pytest.mark.parametrize("compression", CODECS, ids=["none", "gzip", "zstd", "lzf"])
def test_plain_h5py_reads_the_layout(tmp_path, compression):
    last = write_everything(tmp_path / "r.h5", compression)
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f.attrs["actual_steps"] == 50
        assert f.attrs["trajstore_format"] == 1
        pos = f["group['traj']/array['pos']"]
        assert pos.shape == (50, 16, 3)
        np.testing.assert_array_equal(pos[-1], last["pos"])
        np.testing.assert_array_equal(f["group['energy']/array"][:], np.arange(50) * 0.25)
        assert f["group['misc']/array['empty']"].shape == (17, 0, 2)
        assert f["group['count']/array"][()] == 3
        assert f["group['traj']"].attrs["frames"] == 50


@needs_h5dump
@pytest.mark.parametrize("compression", CODECS[:3], ids=["none", "gzip", "zstd"])
def test_h5dump_reads_every_dataset(tmp_path, compression):
    write_everything(tmp_path / "r.h5", compression)
    env = {**os.environ, "HDF5_PLUGIN_PATH": hdf5plugin.PLUGIN_PATH}
    result = subprocess.run(
        [H5DUMP or "h5dump", str(tmp_path / "r.h5")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stdout.lower() + result.stderr.lower()
    assert "DATASET \"array['pos']\"" in result.stdout
    assert "(49,15,0):" in result.stdout  # the last frame's data was printed


@needs_h5dump
def test_h5dump_reads_lzf_layout_headers(tmp_path):
    write_everything(tmp_path / "r.h5", Compression("lzf"))
    result = subprocess.run(
        [H5DUMP or "h5dump", "-H", str(tmp_path / "r.h5")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr

"""Run files open without trajstore: plain h5py, h5netcdf/xarray, ncdump and h5dump.

Format 2 (DESIGN.md §4) names groups and datasets by plain paths and lays
each group out as netCDF-4 does; format-1 files (kUPS's bracketed names,
``tests/data/format1.h5``, written by trajstore before format 2) still read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
from jax.tree_util import tree_leaves

from trajstore import (
    Compression,
    EveryNStep,
    HDF5StorageReader,
    HDF5StorageWriter,
    Once,
    WriterGroupConfig,
    view,
)

from helpers import advance, md_config, md_state

H5DUMP = shutil.which("h5dump")
needs_h5dump = pytest.mark.skipif(
    H5DUMP is None and not os.environ.get("CI"),
    reason="h5dump not installed (make system-deps installs Debian's hdf5-tools)",
)
NCDUMP = shutil.which("ncdump")
needs_ncdump = pytest.mark.skipif(
    NCDUMP is None and not os.environ.get("CI"),
    reason="ncdump not installed (make system-deps installs Debian's netcdf-bin)",
)
FORMAT1 = Path(__file__).parent / "data" / "format1.h5"


def everything(compression):
    """A state and config with every kind of group and leaf a run file holds."""
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
    return config, state


def write_everything(path, compression, steps=range(50), *, state=None, mode="overwrite"):
    """Log ``steps`` of the run; returns the last state."""
    config, first = everything(compression)
    state = first if state is None else state
    with HDF5StorageWriter(
        path, config, state, 50, compile_views=False, metadata={"a": 1}, mode=mode
    ) as w:
        for step in steps:
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
        assert f.attrs["trajstore_format"] == 2
        pos = f["traj/pos"]
        assert pos.shape == (50, 16, 3)
        np.testing.assert_array_equal(pos[-1], last["pos"])
        np.testing.assert_array_equal(f["energy/energy"][:], np.arange(50) * 0.25)
        np.testing.assert_array_equal(f["traj/step"][:], np.arange(50))
        np.testing.assert_array_equal(f["misc/step"][:], np.arange(17) * 3)
        assert f["misc/empty"].shape == (17, 0, 2)
        assert f["count/count"][()] == 3
        assert f["traj"].attrs["frames"] == 50
        assert "step" not in f["count"]  # logged once: no time axis
        # netCDF-4 dimensions: the time axis, then one per leaf axis
        assert [d.label for d in pos.dims] == ["", "", ""]
        assert [d[0].name for d in pos.dims] == ["/traj/frame", "/traj/pos_dim0", "/traj/pos_dim1"]
        assert pos.attrs["coordinates"] == b"step"


# Run in a process that never imports trajstore: the files stand on their own.
_XARRAY_READS = """
import sys, json
import hdf5plugin, numpy as np, xarray as xr
assert "trajstore" not in sys.modules
path = sys.argv[1]
traj = xr.open_dataset(path, group="traj", engine="h5netcdf")
energy = xr.open_dataset(path, group="energy", engine="h5netcdf")
misc = xr.open_dataset(path, group="misc", engine="h5netcdf")
box = xr.open_dataset(path, group="box", engine="h5netcdf")
every10 = traj.pos.isel(frame=slice(None, None, 10))
print(json.dumps({
    "dims": dict(traj.sizes),
    "pos_dims": list(traj.pos.dims),
    "coords": list(traj.coords),
    "steps": every10.step.values.tolist(),
    "last_pos": traj.pos[-1].values.tolist(),
    "energy": energy.energy.values.tolist(),
    "misc_steps": misc.step.values.tolist(),
    "box": box.box.values.tolist(),
    "sys": sorted(m for m in sys.modules if m.startswith("trajstore")),
}))
"""


@pytest.mark.parametrize("compression", CODECS[:3], ids=["none", "gzip", "zstd"])
def test_xarray_reads_a_closed_run_through_h5netcdf_without_trajstore(tmp_path, compression):
    import json

    last = write_everything(tmp_path / "r.h5", compression)
    result = subprocess.run(
        [sys.executable, "-c", _XARRAY_READS, str(tmp_path / "r.h5")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["dims"] == {
        "frame": 50,
        "pos_dim0": 16,
        "pos_dim1": 3,
        "vel_dim0": 16,
        "vel_dim1": 3,
    }
    assert got["pos_dims"] == ["frame", "pos_dim0", "pos_dim1"]
    assert got["coords"] == ["step"]
    assert got["steps"] == [0, 10, 20, 30, 40]
    np.testing.assert_array_equal(np.array(got["last_pos"], np.float32), last["pos"])
    np.testing.assert_array_equal(got["energy"], np.arange(50) * 0.25)
    assert got["misc_steps"] == list(range(0, 50, 3))
    assert got["box"] == np.asarray(last["box"]).tolist()
    assert got["sys"] == []


@needs_ncdump
def test_ncdump_reads_the_header_of_a_closed_run(tmp_path):
    write_everything(tmp_path / "r.h5", None)
    result = subprocess.run(
        [NCDUMP or "ncdump", "-h", str(tmp_path / "r.h5")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    header = result.stdout
    assert "frame = UNLIMITED ; // (50 currently)" in header
    assert "float pos(frame, pos_dim0, pos_dim1) ;" in header
    assert 'pos:coordinates = "step" ;' in header
    assert "int64 step(frame) ;" in header
    assert "float energy(frame) ;" in header
    assert "int64 count ;" in header


@needs_ncdump
def test_ncdump_prints_the_steps(tmp_path):
    write_everything(tmp_path / "r.h5", Compression("gzip", 5))
    result = subprocess.run(
        [NCDUMP or "ncdump", "-v", "step", "-g", "misc", str(tmp_path / "r.h5")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "step = 0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48 ;" in (
        " ".join(result.stdout.split())
    )


@needs_h5dump
def test_h5dump_addresses_a_dataset_by_its_plain_path(tmp_path):
    last = write_everything(tmp_path / "r.h5", None)
    result = subprocess.run(
        [
            H5DUMP or "h5dump",
            "-d",
            "/traj/pos",
            "-s",
            "49,15,0",
            "-c",
            "1,1,3",
            str(tmp_path / "r.h5"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert 'DATASET "/traj/pos"' in result.stdout
    values = result.stdout.split("DATA {")[1].split("}")[0].split(":", 1)[1]
    np.testing.assert_allclose([float(v) for v in values.split(",")], last["pos"][15], rtol=1e-6)


def _same_runs(path_a, path_b):
    with HDF5StorageReader(path_a) as a, HDF5StorageReader(path_b) as b:
        assert a.list_groups() == b.list_groups()
        assert a.metadata == b.metadata
        for name in b.list_groups():
            got, want = a.focus_group(name), b.focus_group(name)
            if want.spec.time_axis:
                assert len(got) == len(want)
            for x, y in zip(tree_leaves(got[...]), tree_leaves(want[...]), strict=True):
                np.testing.assert_array_equal(x, y)


def test_format_1_files_still_read_as_a_new_file_of_the_same_run(tmp_path):
    write_everything(tmp_path / "new.h5", None)
    with h5py.File(FORMAT1, "r") as f:
        assert f.attrs["trajstore_format"] == 1
        assert "group['traj']/array['pos']" in f
    _same_runs(FORMAT1, tmp_path / "new.h5")


def test_appending_to_a_format_1_file_keeps_its_names(tmp_path):
    old = tmp_path / "old.h5"
    shutil.copyfile(FORMAT1, old)
    last = write_everything(tmp_path / "new.h5", None)
    for path in (old, tmp_path / "new.h5"):
        write_everything(path, None, range(50, 60), state=last, mode="append")
    with h5py.File(old, "r") as f:
        assert f.attrs["trajstore_format"] == 1
        assert f["group['traj']/array['pos']"].shape == (60, 16, 3)
        assert "traj" not in f
    _same_runs(old, tmp_path / "new.h5")


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
    assert 'DATASET "pos"' in result.stdout
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

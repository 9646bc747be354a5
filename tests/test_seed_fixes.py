"""Each thing kUPS 1.0.8's storage gets wrong, shown right here (issue #2)."""

from __future__ import annotations

import json
import os

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trajstore import (
    Compression,
    EveryNStep,
    HDF5StorageReader,
    HDF5StorageWriter,
    WriterGroupConfig,
    view,
)
from trajstore.errors import FrameMismatchError

from helpers import advance, md_config, md_state


# 1. total_steps is a hint -------------------------------------------------------
def test_logging_past_total_steps_is_kept(tmp_path):
    state = md_state()
    with HDF5StorageWriter(tmp_path / "r.h5", md_config(every=1), state, total_steps=10) as log:
        for step in range(25):
            state = advance(state, step)
            log.log(state, step)
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        energy = reader.focus_group("group['energy']")
        assert len(energy) == 25
        np.testing.assert_array_equal(energy[:], np.arange(25) * 0.25)


def test_stopping_early_shows_no_preallocated_frames(tmp_path):
    state = md_state()
    with HDF5StorageWriter(tmp_path / "r.h5", md_config(every=1), state, total_steps=1000) as log:
        for step in range(7):
            state = advance(state, step)
            log.log(state, step)
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        assert len(reader.focus_group("group['traj']")) == 7
    with h5py.File(tmp_path / "r.h5") as f:  # also for plain h5py users
        assert f["traj/pos"].shape[0] == 7


# 2. a bad frame raises and keeps everything before it -----------------------------
def test_wrong_shape_raises_from_log_and_keeps_earlier_frames(tmp_path):
    config = {"x": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    with (
        pytest.raises(FrameMismatchError, match=r"expected float32\[4\], got float32\[5\]"),
        HDF5StorageWriter(tmp_path / "r.h5", config, np.zeros(4, np.float32), 20) as log,
    ):
        for step in range(10):
            log.log(np.full(4, step, np.float32), step)
        log.log(np.zeros(5, np.float32), 10)
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        x = reader.focus_group("group['x']")
        assert len(x) == 10
        np.testing.assert_array_equal(x[:, 0], np.arange(10))


def test_wrong_dtype_and_structure_raise(tmp_path):
    config = {"x": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    with HDF5StorageWriter(
        tmp_path / "r.h5", config, {"a": np.zeros(2, np.float32)}, 5, compile_views=False
    ) as log:
        with pytest.raises(FrameMismatchError, match="float64"):
            log.log({"a": np.zeros(2)}, 0)
        with pytest.raises(FrameMismatchError, match="structure"):
            log.log({"b": np.zeros(2, np.float32)}, 1)
        log.log({"a": np.ones(2, np.float32)}, 2)
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        x = reader.focus_group("group['x']")
        assert len(x) == 3  # frames 0 and 1 were refused; frame 2 is at index 2
        np.testing.assert_array_equal(x[2]["a"], [1, 1])


# 3. a stored frame is the value at log() time ----------------------------------
def test_numpy_state_mutated_in_place_after_log(tmp_path):
    state = {"pos": np.zeros((8, 3), np.float32)}
    config = {"traj": WriterGroupConfig(view(lambda s: s["pos"]), EveryNStep(1))}
    with HDF5StorageWriter(tmp_path / "r.h5", config, state, 200, compile_views=False) as log:
        for step in range(200):
            state["pos"][:] = step  # in place, right after the previous log()
            log.log(state, step)
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        stored = reader.focus_group("group['traj']")[:]
    np.testing.assert_array_equal(stored[:, 0, 0], np.arange(200))


@pytest.mark.parametrize("compile_views", [True, False])
def test_donated_jax_buffers_after_log(tmp_path, compile_views):
    step_fn = jax.jit(lambda s: {"pos": s["pos"] + 1.0}, donate_argnums=0)
    state = {"pos": jnp.zeros((64, 3))}
    config = {"traj": WriterGroupConfig(view(lambda s: s["pos"]), EveryNStep(1))}
    with HDF5StorageWriter(
        tmp_path / "r.h5", config, state, 50, compile_views=compile_views
    ) as log:
        for step in range(50):
            log.log(state, step)
            state = step_fn(state)  # donates the buffers log() just saw
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        stored = reader.focus_group("group['traj']")[:]
    np.testing.assert_array_equal(stored[:, 5, 2], np.arange(50))


# 4. the queue is bounded in bytes (see test_background_writer for blocking) -----
def test_writer_passes_its_byte_bound_to_the_background_writer(tmp_path):
    with HDF5StorageWriter(
        tmp_path / "r.h5", md_config(), md_state(), 10, max_pending_bytes=12345
    ) as log:
        assert log._require_open().max_pending_bytes == 12345


# 6. no pickle in the file: structure is JSON -----------------------------------
def test_structure_is_stored_as_json_not_pickle(tmp_path):
    state = md_state()
    with HDF5StorageWriter(tmp_path / "r.h5", md_config(), state, 4) as log:
        for step in range(4):
            log.log(state, step)
    with h5py.File(tmp_path / "r.h5") as f:
        datasets: list[h5py.Dataset] = []
        f.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        assert all(ds.dtype.kind != "V" for ds in datasets)  # kUPS kept pickles in void datasets
        json.loads(f.attrs["config_structure"])
        leaves = 0
        for path in ("traj", "energy", "box"):
            spec = json.loads(f[path].attrs["spec"])
            assert spec["structure"]["t"] in {"dict", "leaf"}
            leaves += len(json.loads(f[path].attrs["paths"]))
        assert leaves == 4
        raw = (tmp_path / "r.h5").read_bytes()
    assert b"\x80\x04\x95" not in raw and b"cjax" not in raw  # no pickle protocol-4 stream


# 8. chunks serve streaming and random-frame reads -------------------------------
def test_chunks_hold_about_the_target_bytes(tmp_path):
    big = {"big": np.zeros((1_000_000, 3), np.float32)}
    state = {**md_state(n_atoms=10_000), **big}
    config = {
        "traj": WriterGroupConfig(view(lambda s: {"pos": s["pos"]}), EveryNStep(1)),
        "big": WriterGroupConfig(view(lambda s: s["big"]), EveryNStep(10)),
        "energy": WriterGroupConfig(view(lambda s: s["energy"]), EveryNStep(1)),
    }
    with HDF5StorageWriter(tmp_path / "r.h5", config, state, 2000, compile_views=False):
        pass
    target = Compression().target_chunk_bytes
    with h5py.File(tmp_path / "r.h5") as f:
        pos = f["traj/pos"]
        assert pos.chunks == (2, 10_000, 3)  # 240 KB: one random frame decompresses fast
        big_chunks = f["big/big"].chunks
        assert big_chunks[0] == 1 and np.prod(big_chunks) * 4 <= target
        energy = f["energy/energy"]
        assert energy.chunks[0] * 4 <= target


# 9. the file stays near the size of its data --------------------------------------
@pytest.mark.parametrize(("steps", "flush_every"), [(200_000, None), (20_000, 10)])
def test_long_scalar_run_stays_small(tmp_path, steps, flush_every):
    state = {"a": np.float32(0), "b": np.float32(0), "c": np.float32(0)}
    config = {"s": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    rng = np.random.default_rng(0)
    values = rng.random((steps, 3), dtype=np.float32)
    path = tmp_path / "scalars.h5"
    with HDF5StorageWriter(path, config, state, steps, compile_views=False) as log:
        for step in range(steps):
            a, b, c = values[step]
            log.log({"a": a, "b": b, "c": c}, step)
            if flush_every and step % flush_every == 0:
                log.flush()
    data_bytes = values.nbytes
    assert os.path.getsize(path) <= 2 * data_bytes + 256 * 1024
    with HDF5StorageReader(path) as reader:
        stored = reader.focus_group("group['s']")[:]
    np.testing.assert_array_equal(stored["b"], values[:, 1])

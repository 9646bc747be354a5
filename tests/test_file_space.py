"""A run flushed while its chunks fill up holds no dead space (SWMR never frees a chunk)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from trajstore import EveryNStep, HDF5StorageWriter, WriterGroupConfig, view


@pytest.mark.parametrize("flush_every", [None, 1, 7, 10])
def test_chunks_filled_across_flushes_leave_no_dead_space(tmp_path, flush_every):
    frames = 300
    values = np.random.default_rng(0).random((frames, 216, 3), dtype=np.float32)
    config = {"traj": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    path = tmp_path / "r.h5"
    state = {"pos": values[0]}
    with HDF5StorageWriter(path, config, state, frames, compile_views=False) as log:
        for step in range(frames):
            log.log({"pos": values[step]}, step)
            if flush_every and step % flush_every == 0:
                log.flush()
    datasets: list[h5py.Dataset] = []
    with h5py.File(path, "r", locking=False) as f:
        f.visititems(lambda _, o: datasets.append(o) if isinstance(o, h5py.Dataset) else None)
        assert f["traj"].attrs["frames"] == frames
        stored = sum(ds.id.get_storage_size() for ds in datasets)
        chunks = f["traj/pos"].chunks
    assert chunks[0] > 1  # chunks of many frames: some fill up across flushes
    # File metadata is a few KB; a leaked chunk is chunks[0] frames (~160 KB).
    assert os.path.getsize(path) - stored < 64 * 1024

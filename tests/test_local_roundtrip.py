"""The local writer and reader: the kUPS API, end to end."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from trajstore import (
    Compression,
    EveryNStep,
    HDF5StorageReader,
    HDF5StorageWriter,
    Logger,
    WriterGroupConfig,
    view,
)
from trajstore.store.reader import RunFileReader

from helpers import advance, md_config, md_state


def write_md(path, steps=20, every=2, compression=Compression(), **kwargs):
    state = md_state()
    states = []
    with HDF5StorageWriter(path, md_config(every, compression), state, steps, **kwargs) as log:
        for step in range(steps):
            state = advance(state, step)
            states.append(state)
            log.log(state, step)
    return states


def test_writer_is_a_logger(tmp_path):
    writer = HDF5StorageWriter(tmp_path / "r.h5", md_config(), md_state(), 10)
    assert isinstance(writer, Logger)


@pytest.mark.parametrize("compression", [Compression(), Compression("gzip", 4), None])
def test_round_trip(tmp_path, compression):
    states = write_md(tmp_path / "run.h5", compression=compression, metadata={"T": 300})
    with HDF5StorageReader(tmp_path / "run.h5") as reader:
        assert reader.list_groups() == ["group['box']", "group['energy']", "group['traj']"]
        assert reader.metadata == {"T": 300}
        assert reader.actual_steps == 20
        traj = reader.focus_group("group['traj']")
        assert len(traj) == 10
        np.testing.assert_array_equal(traj[:]["pos"], np.stack([s["pos"] for s in states[::2]]))
        np.testing.assert_array_equal(traj[-1]["vel"], states[18]["vel"])
        energy = reader.focus_group(lambda c: c["energy"])
        np.testing.assert_array_equal(energy[:], [s["energy"] for s in states])
        box = reader.focus_group(lambda c: c["box"])
        np.testing.assert_array_equal(box[...], np.eye(3))


def test_single_config_group_is_called_group(tmp_path):
    config = WriterGroupConfig(view(lambda s: s["energy"]), EveryNStep(1))
    with HDF5StorageWriter(tmp_path / "r.h5", config, md_state(), 3) as log:
        for step in range(3):
            log.log(md_state(seed=step), step)
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        assert reader.list_groups() == ["group"]
        assert len(reader.focus_group(lambda c: c)) == 3


def test_select_reads_only_the_chosen_datasets(tmp_path, monkeypatch):
    states = write_md(tmp_path / "run.h5")
    with HDF5StorageReader(tmp_path / "run.h5") as reader:
        traj = reader.focus_group("group['traj']")
        touched: list[list[int]] = []
        original = reader.file.read

        def spy(group, leaves, index, **kw):
            touched.append(list(leaves))
            return original(group, leaves, index, **kw)

        monkeypatch.setattr(reader.file, "read", spy)
        pos = traj.read(slice(2, 5), select=lambda s: s["pos"])
        assert touched == [[0]]  # leaves are in key order: pos, vel
        np.testing.assert_array_equal(pos, np.stack([s["pos"] for s in states[4:10:2]]))


def test_read_chunked_covers_every_frame_once(tmp_path):
    states = write_md(tmp_path / "run.h5", steps=21, every=1)
    with HDF5StorageReader(tmp_path / "run.h5") as reader:
        traj = reader.focus_group("group['traj']")
        chunks = list(traj.read_chunked(4, select=lambda s: s["vel"]))
        assert [len(c) for c in chunks] == [4, 4, 4, 4, 4, 1]
        np.testing.assert_array_equal(np.concatenate(chunks), np.stack([s["vel"] for s in states]))


def test_indexing_reaches_into_leaf_axes(tmp_path):
    states = write_md(tmp_path / "run.h5")
    expected = np.stack([s["pos"] for s in states[::2]])
    with HDF5StorageReader(tmp_path / "run.h5") as reader:
        traj = reader.focus_group("group['traj']")
        np.testing.assert_array_equal(traj[::-3, 1:4, -1]["pos"], expected[::-3, 1:4, -1])
        np.testing.assert_array_equal(traj[2, ..., 0]["pos"], expected[2, ..., 0])
        assert traj[3, 0, 0]["pos"] == expected[3, 0, 0]


def test_jax_state_and_registered_dataclass(tmp_path):
    from tests_support import Particles

    state = Particles(jnp.zeros((4, 3)), jnp.ones((4, 3)), jnp.float32(1.5))
    config = {
        "traj": WriterGroupConfig(view(lambda s: s), EveryNStep(1)),
        "e": WriterGroupConfig(view(lambda s: s.energy), EveryNStep(1)),
    }
    with HDF5StorageWriter(tmp_path / "r.h5", config, state, 5) as log:
        for step in range(5):
            state = Particles(state.pos + 1, state.vel * 2, state.energy + 1)
            log.log(state, step)
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        traj = reader.focus_group("group['traj']")
        last = traj[-1]
        assert isinstance(last, Particles)
        np.testing.assert_array_equal(last.pos, np.full((4, 3), 5.0))
        np.testing.assert_array_equal(traj.read(select=lambda p: p.vel)[:, 0, 0], [2, 4, 8, 16, 32])
        np.testing.assert_array_equal(traj[:].energy, [2.5, 3.5, 4.5, 5.5, 6.5])
        np.testing.assert_array_equal(reader.focus_group("group['e']")[:], traj[:].energy)


def test_once_group_without_time_axis(tmp_path):
    write_md(tmp_path / "run.h5")
    with HDF5StorageReader(tmp_path / "run.h5") as reader:
        box = reader.focus_group("group['box']")
        with pytest.raises(TypeError, match="no time axis"):
            len(box)
        np.testing.assert_array_equal(box[1], [0, 1, 0])
        assert "logged once" in repr(box)


@pytest.mark.parametrize(("compression", "cached"), [(None, False), (Compression(), True)])
def test_only_compressed_chunks_go_through_the_chunk_cache(tmp_path, compression, cached):
    # An uncompressed chunk goes straight into the result (one copy fewer,
    # and one frame read without its chunk's other frames); a compressed
    # one is decompressed once into the cache for its neighbours.
    states = write_md(tmp_path / "r.h5", compression=compression)
    reader = RunFileReader(tmp_path / "r.h5")
    try:
        group = reader.group_index("group['traj']")
        for frame in (3, 4, 0):
            (pos,) = reader.read(group, [0], frame)
            np.testing.assert_array_equal(pos, np.asarray(states[2 * frame]["pos"]))
        dataset = reader._datasets[(group, 0)]
        cache_bytes = dataset.id.get_access_plist().get_chunk_cache()[1]
        assert (cache_bytes > 0) == cached
    finally:
        reader.close()

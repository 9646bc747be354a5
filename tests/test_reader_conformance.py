"""One reader suite, run against HDF5StorageReader and RemoteStorageReader alike.

Each run file is written locally straight into the store's data directory,
then read both ways: results and exceptions must be the same.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trajstore import (
    EveryNStep,
    HDF5StorageReader,
    HDF5StorageWriter,
    Once,
    RemoteStorageReader,
    WriterGroupConfig,
    view,
)
from trajstore import errors as E

from pytrees import materialise, tree_shapes
from test_indexing import indexes
from tests_support import Particles

KINDS = ["local", "remote"]
_names = itertools.count()


def open_reader(kind, store, run):
    if kind == "local":
        return HDF5StorageReader(store.run_file(run))
    return RemoteStorageReader(store.address, run)


def write_run(store, config, states, **kwargs):
    run = f"conf/run-{next(_names)}"
    path = store.run_file(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    with HDF5StorageWriter(
        path, config, states[0], len(states), compile_views=False, **kwargs
    ) as log:
        for step, state in enumerate(states):
            log.log(state, step)
    return run


@pytest.fixture(scope="module")
def md_run(shared_store):
    rng = np.random.default_rng(7)
    states = [
        {
            "p": Particles(
                rng.random((6, 3), np.float32), rng.random((6, 3), np.float32), np.float64(i)
            ),
            "box": np.eye(3) * 2,
            "tag": np.int16(i),
        }
        for i in range(30)
    ]
    config = {
        "traj": WriterGroupConfig(view(lambda s: s["p"]), EveryNStep(2)),
        "tag": WriterGroupConfig(
            view(lambda s: {"t": s["tag"], "n": [s["tag"], None]}), EveryNStep(1)
        ),
        "box": WriterGroupConfig(view(lambda s: s["box"]), Once()),
    }
    return write_run(shared_store, config, states, metadata={"who": "conformance"}), states


@pytest.mark.parametrize("kind", KINDS)
def test_groups_metadata_and_lengths(shared_store, md_run, kind):
    run, _ = md_run
    with open_reader(kind, shared_store, run) as reader:
        assert reader.list_groups() == ["group['box']", "group['tag']", "group['traj']"]
        assert reader.metadata == {"who": "conformance"}
        assert reader.actual_steps == 30
        assert len(reader.focus_group("group['traj']")) == 15
        assert len(reader.focus_group(lambda c: c["tag"])) == 30
        with pytest.raises(TypeError):
            len(reader.focus_group("group['box']"))


@pytest.mark.parametrize("kind", KINDS)
def test_values_and_structure(shared_store, md_run, kind):
    run, states = md_run
    with open_reader(kind, shared_store, run) as reader:
        traj = reader.focus_group("group['traj']")
        last = traj[-1]
        assert isinstance(last, Particles)
        np.testing.assert_array_equal(last.pos, states[28]["p"].pos)
        sliced = traj.read((slice(1, 10, 3), slice(None, None, -2), 1), select=lambda p: p.vel)
        expected = np.stack([s["p"].vel for s in states[::2]])[1:10:3, ::-2, 1]
        np.testing.assert_array_equal(sliced, expected)
        with pytest.raises(IndexError, match="too many indices"):
            traj[1:10:3, ::-2, 1]  # the index applies to every leaf: energy has one axis
        tag = reader.focus_group("group['tag']")[::-7]
        np.testing.assert_array_equal(tag["t"], np.arange(30)[::-7])
        assert tag["n"][1] is None
        np.testing.assert_array_equal(reader.focus_group("group['box']")[...], np.eye(3) * 2)
        np.testing.assert_array_equal(reader.focus_group("group['box']")[1], [0, 2, 0])


@pytest.mark.parametrize("kind", KINDS)
def test_select_and_chunks(shared_store, md_run, kind):
    run, states = md_run
    with open_reader(kind, shared_store, run) as reader:
        traj = reader.focus_group("group['traj']")
        energy = traj.read(slice(None), select=lambda p: p.energy)
        np.testing.assert_array_equal(energy, np.arange(0, 30, 2))
        chunks = list(traj.read_chunked(4, select=lambda p: (p.pos, p.energy)))
        assert [len(c[1]) for c in chunks] == [4, 4, 4, 3]
        np.testing.assert_array_equal(
            np.concatenate([c[0] for c in chunks]), np.stack([s["p"].pos for s in states[::2]])
        )


@pytest.mark.parametrize("kind", KINDS)
def test_a_field_selected_twice_reads_as_two_equal_arrays(shared_store, md_run, kind):
    run, states = md_run
    positions = np.stack([s["p"].pos for s in states[::2]])
    with open_reader(kind, shared_store, run) as reader:
        traj = reader.focus_group("group['traj']")
        for index in (slice(None), 3):  # a Read, and a one-frame Fetch remotely
            pos, energy, again = traj.read(index, select=lambda p: (p.pos, p.energy, p.pos))
            np.testing.assert_array_equal(pos, positions[index])
            np.testing.assert_array_equal(again, positions[index])
            np.testing.assert_array_equal(energy, np.arange(0, 30, 2)[index])
            assert again is not pos and not np.shares_memory(again, pos)


@pytest.mark.parametrize("kind", KINDS)
def test_errors(shared_store, md_run, kind):
    run, _ = md_run
    with pytest.raises(E.RunNotFoundError), open_reader(kind, shared_store, "conf/absent"):
        pass
    with open_reader(kind, shared_store, run) as reader:
        with pytest.raises(E.GroupNotFoundError):
            reader.focus_group("group['nope']")
        with pytest.raises(KeyError):
            reader.focus_group(lambda c: c["nope"])
        traj = reader.focus_group("group['traj']")
        for bad in (15, -16, (0, 6), (0, 0, 3), (..., ...), (0,) * 65):
            with pytest.raises(E.FrameIndexError):
                traj[bad]
        for bad in (1.5, [0, 1], True, (0, None)):
            with pytest.raises(IndexError):
                traj[bad]
        with pytest.raises(ValueError, match="step"):
            traj[::0]
        with pytest.raises(ValueError, match="chunk_size"):
            traj.read_chunked(0)
        with pytest.raises(E.SchemaError):
            traj.read(select=lambda p: 7)


trees = tree_shapes(max_leaves=3)


def outcome(reader_group, index):
    import jax

    try:
        value = reader_group[index]
    except Exception as e:  # the type is what must agree
        return ("error", type(e))
    leaves = jax.tree_util.tree_leaves(value)
    return (
        "ok",
        jax.tree_util.tree_structure(value),
        [(type(x), np.shape(x), np.asarray(x).dtype, np.asarray(x).tobytes()) for x in leaves],
    )


@given(tree=trees, frames=st.integers(1, 8), index=indexes, seed=st.integers(0, 2**16))
def test_local_and_remote_agree_on_random_pytrees_and_indexes(
    shared_store, tree, frames, index, seed
):
    rng = np.random.default_rng(seed)
    states = [materialise(tree, rng) for _ in range(frames)]
    config = {"g": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    run = write_run(shared_store, config, states)
    with (
        open_reader("local", shared_store, run) as local,
        open_reader("remote", shared_store, run) as remote,
    ):
        a = outcome(local.focus_group("group['g']"), index)
        b = outcome(remote.focus_group("group['g']"), index)
        assert a == b
        assert len(local.focus_group("group['g']")) == len(remote.focus_group("group['g']"))

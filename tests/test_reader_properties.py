"""Hypothesis: random pytrees, dtypes, shapes and index expressions, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trajstore import EveryNStep, HDF5StorageReader, HDF5StorageWriter, WriterGroupConfig, view

from pytrees import materialise, tree_shapes
from test_indexing import indexes

trees = tree_shapes(max_leaves=4)


def leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


@given(tree=trees, frames=st.integers(0, 9), index=indexes, seed=st.integers(0, 2**16))
def test_reads_match_numpy_on_the_same_data(tmp_path_factory, tree, frames, index, seed):
    rng = np.random.default_rng(seed)
    states = [materialise(tree, rng) for _ in range(max(frames, 1))]
    path = tmp_path_factory.mktemp("prop") / "r.h5"
    config = {"g": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    with HDF5StorageWriter(path, config, states[0], frames, compile_views=False) as log:
        for step in range(frames):
            log.log(states[step], step)
    stacked = [
        np.stack(column) if frames else np.zeros((0, *np.shape(column[0])), column[0].dtype)
        for column in zip(*[leaves(s) for s in states], strict=True)
    ]
    with HDF5StorageReader(path) as reader:
        group = reader.focus_group("group['g']")
        assert len(group) == frames
        for expected_leaf, got_leaf in zip(stacked, leaves(group[:]), strict=True):
            assert got_leaf.dtype == expected_leaf.dtype
            assert got_leaf.tobytes() == expected_leaf.tobytes()
        try:
            expected = [leaf[index] for leaf in stacked]
        except IndexError:
            with pytest.raises(IndexError):
                group[index]
            return
        got = leaves(group[index])
        for e, g in zip(expected, got, strict=True):
            assert np.shape(g) == np.shape(e)
            assert np.asarray(g).dtype == np.asarray(e).dtype
            assert type(g) is type(e)  # numpy scalar where numpy gives one
            assert np.asarray(g).tobytes() == np.asarray(e).tobytes()

"""plan_index reproduces numpy basic indexing, results and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trajstore.errors import FrameIndexError
from trajstore.store.indexing import plan_index


def components(max_size: int = 6) -> st.SearchStrategy[object]:
    bound = max_size + 3
    ints = st.integers(-bound, bound)
    opt = st.none() | ints
    slices = st.builds(slice, opt, opt, st.none() | st.integers(-3, 3).filter(bool))
    return st.one_of(ints, slices, st.just(Ellipsis))


indexes = st.one_of(components(), st.lists(components(), max_size=4).map(tuple))
shapes = st.lists(st.integers(0, 5), max_size=3).map(tuple)


def apply_plan(array: np.ndarray, index: object) -> object:
    plan = plan_index(index, array.shape)
    for s in plan.hyperslab:  # h5py's contract: ints and positive-step slices only
        assert isinstance(s, int) or (isinstance(s, slice) and (s.step or 1) > 0)
    out = np.asarray(array[plan.hyperslab])
    if plan.needs_fixup:
        out = out[plan.fixup]
    assert out.shape == plan.shape
    return out[()] if plan.scalar else out


@given(shape=shapes, index=indexes)
def test_plan_matches_numpy(shape, index):
    array = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    try:
        expected = array[index]
    except IndexError:
        with pytest.raises(IndexError):
            apply_plan(array, index)
        return
    got = apply_plan(array, index)
    assert type(got) is type(expected)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("index", [1.5, "a", None, True, [0, 1], np.array([0])])
def test_non_basic_indexes_are_index_errors(index):
    with pytest.raises(FrameIndexError):
        plan_index(index, (4,))


def test_two_ellipses_refused():
    with pytest.raises(IndexError, match="single ellipsis"):
        plan_index((..., 0, ...), (3, 3))

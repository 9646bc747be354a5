"""Random pytrees of arrays for property tests: shapes from Hypothesis, values from numpy."""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from hypothesis import strategies as st

from trajstore.schema import SUPPORTED_DTYPES, numpy_dtype

DTYPES = [numpy_dtype(d) for d in SUPPORTED_DTYPES]

#: A leaf: (dtype, shape of one frame).
leaf_kinds = st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 3), max_size=2).map(tuple))
keys = st.text(string.ascii_lowercase, min_size=1, max_size=3)


def tree_shapes(max_leaves: int) -> st.SearchStrategy[Any]:
    """Nested dicts, lists and tuples whose leaves are :data:`leaf_kinds`."""
    return st.recursive(
        leaf_kinds,
        lambda children: st.one_of(
            st.dictionaries(keys, children, min_size=1, max_size=3),
            st.lists(children, min_size=1, max_size=3),
            st.lists(children, min_size=1, max_size=2).map(tuple),
        ),
        max_leaves=max_leaves,
    )


def materialise(tree: Any, rng: np.random.Generator) -> Any:
    """A pytree of that shape with random bits in every leaf (valid bools)."""
    if isinstance(tree, dict):
        return {k: materialise(v, rng) for k, v in tree.items()}
    if isinstance(tree, list):
        return [materialise(v, rng) for v in tree]
    if isinstance(tree, tuple) and not isinstance(tree[0], np.dtype):
        return tuple(materialise(v, rng) for v in tree)
    dtype, shape = tree
    raw = rng.integers(0, 2 if dtype == np.bool_ else 256, (*shape, dtype.itemsize), np.uint8)
    return np.ascontiguousarray(raw).view(dtype).reshape(shape)

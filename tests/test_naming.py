"""Format 2's plain names: derived from key paths, valid HDF5 names, unique, readable back."""

from __future__ import annotations

import h5py
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from jax.tree_util import keystr, tree_flatten_with_path, tree_leaves

from trajstore import (
    EveryNStep,
    HDF5StorageReader,
    HDF5StorageWriter,
    Once,
    WriterGroupConfig,
    view,
)
from trajstore.errors import GroupNotFoundError
from trajstore.store.naming import group_names, group_paths, key_segments
from trajstore.store.reader import RunFileReader


@pytest.mark.parametrize(
    ("keystr_text", "segments"),
    [
        ("", []),
        ("['a'][0].pos", ["a", "0", "pos"]),
        ("""["q'x"]""", ["q'x"]),
        ("""['d"q']""", ['d"q']),
        ("['back\\\\slash']", ["back\\slash"]),
        ("[5]", ["5"]),
        ("[<flat index 3>]", ["<flat index 3>"]),
        ("not a keystr", ["not a keystr"]),
    ],
)
def test_key_segments(keystr_text, segments):
    assert key_segments(keystr_text) == segments


def test_key_segments_of_jax_paths():
    tree = {"a": [1, (2,)], "q'x": 3, 'd"q': 4, "uni\u00e9\\": 5}
    for path, _ in tree_flatten_with_path(tree)[0]:
        expected = [str(getattr(k, "key", getattr(k, "idx", None))) for k in path]
        assert key_segments(keystr(path)) == expected


def test_group_paths():
    names = ["group['traj']", "group['a']['b']", "group['a']['c']", "group.field", "group[0]"]
    assert group_paths(names, 2) == ["traj", "a/b", "a/c", "field", "0"]
    assert group_paths(["group"], 2) == ["data"]
    assert group_paths(names, 1) == names
    # escaped: never empty, '.', '..', nor holding '/' or NUL; taken twice: numbered
    assert group_paths(["group['']", "group['.']", "group['..']"], 2) == ["%_", "%2e_", "%2e2e_"]
    assert group_paths(["group['0']", "group[0]"], 2) == ["0", "0_2"]


def test_quoted_keys_read_back_as_the_strings_repr_wrote():
    for key in ["a\n", "an", "\x00", "x00", "tab\there", "q'\"", "uni\u00e9", "\U0001f600", "\\"]:
        (path, _), *_ = tree_flatten_with_path({key: 1})[0]
        assert key_segments(keystr(path)) == [key]


def test_leaves_subgroups_and_reserved_names_never_share_a_name():
    # A subgroup called step or frame, beside the group's own step and frame.
    names = group_names("traj", ["['step']['x']", "['frame']['x']", "['y']"], [(), (), ()], 2)
    assert names.datasets == ("step_2/x", "frame_2/x", "y")
    # Keys that read the same once unescaped differently: two objects, two names.
    names = group_names("g", ["['a\\n']", "['an']['b']"], [(), ()], 2)
    assert names.datasets == ("a\n", "an/b")
    # Group names no pytree makes (a client may send them): a leaf group where a subgroup is.
    assert group_paths(["group['a']['b']", "group['a']"], 2) == ["a/b", "a_2"]
    assert group_paths(["group['a']", "group['a']['frame']"], 2) == ["a", "a_2/frame"]


@pytest.mark.parametrize(
    "state",
    [
        {"step": {"x": np.float32(1)}, "y": np.float32(2)},
        {"frame": {"x": np.float32(1)}, "y": np.float32(2)},
        {"a\n": np.float32(1), "an": {"b": np.float32(2)}},
    ],
    ids=["step-subgroup", "frame-subgroup", "newline-key"],
)
def test_states_with_awkward_keys_write_and_read_back(tmp_path, state):
    config = {"traj": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    with HDF5StorageWriter(tmp_path / "r.h5", config, state, compile_views=False) as writer:
        writer.log(state, 0)
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        got = reader.focus_group("traj")[0]
    for a, b in zip(tree_leaves(got), tree_leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_dataset_names_avoid_the_groups_own_objects():
    names = group_names(
        "traj", ["['step']", "['frame']", "['pos']", "['pos_dim0']"], [(), (), (2,), ()], 2
    )
    assert names.datasets == ("step_2", "frame_2", "pos", "pos_dim0")
    assert names.dims == ((), (), ("pos_dim0_2",), ())
    whole = group_names("a/energy", [""], [(3,)], 2)
    assert whole.datasets == ("energy",)
    assert whole.dim_paths(0) == ["energy_dim0"]
    nested = group_names("traj", ["['x']['y']", "['x']['z']"], [(2,), ()], 2)
    assert nested.datasets == ("x/y", "x/z")
    assert nested.dim_paths(0) == ["x/y_dim0"]


_KEYS = st.sampled_from(["step", "frame", "x", "x_2", "x_dim0", "data", ".", "%"]) | st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"),
    min_size=0,
    max_size=12,
)
_VALUES = st.recursive(
    st.sampled_from([np.float32(1.5), np.arange(3, dtype=np.int32), np.ones((2, 2))]),
    lambda children: st.dictionaries(_KEYS, children, min_size=1, max_size=4),
    max_leaves=8,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=_VALUES, config_key=_KEYS)
def test_any_keys_write_and_read_back(tmp_path, value, config_key):
    """Hostile-but-valid keys (dots, quotes, NUL, '%', empty): a file that reads back."""
    path = tmp_path / "r.h5"
    config = {
        config_key: WriterGroupConfig(view(lambda s: s), EveryNStep(2)),
        "once": WriterGroupConfig(view(lambda s: s), Once()),
    }
    with HDF5StorageWriter(path, config, value, compile_views=False) as writer:
        for step in range(3):
            writer.log(value, step)
    with HDF5StorageReader(path) as reader:
        group = reader.focus_group(lambda c: c[config_key])
        assert len(group) == 2
        for got, want in zip(tree_leaves(group[1]), tree_leaves(value), strict=True):
            np.testing.assert_array_equal(got, want)
    run = RunFileReader(path)
    names = run.names
    run.close()
    with h5py.File(path, "r", locking=False) as f:  # every dataset is where its name says
        for group_names_ in names:
            for dataset in group_names_.datasets:
                assert isinstance(f[f"{group_names_.path}/{dataset}"], h5py.Dataset)


def test_groups_are_found_by_their_plain_path(tmp_path):
    state = {"e": np.float32(1)}
    config = {
        "energy": WriterGroupConfig(view(lambda s: s["e"]), EveryNStep(1)),
        "nested": {"inner": WriterGroupConfig(view(lambda s: s["e"]), EveryNStep(1))},
    }
    with HDF5StorageWriter(tmp_path / "r.h5", config, state) as writer:
        writer.log(state, 0)
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        assert reader.focus_group("energy").name == "group['energy']"
        assert reader.focus_group("/nested/inner").name == "group['nested']['inner']"
        with pytest.raises(GroupNotFoundError, match="by path"):
            reader.focus_group("inner")

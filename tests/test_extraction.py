"""One extraction per step (issue #18): every way of running the views writes the same file.

``auto`` copies the leaves a view only selects straight from the state and
runs the rest of the due groups as one compiled call; ``fused`` runs every
view in one compiled call; ``per_group`` runs one compiled view per group,
as trajstore always did. States here are JAX device arrays.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trajstore import (
    EveryNStep,
    HDF5StorageReader,
    HDF5StorageWriter,
    Once,
    WriterGroupConfig,
    view,
)
from trajstore import errors as E
from trajstore.extraction import EXTRACTIONS
from trajstore.groups import prepare_groups
from trajstore.store.layout import MAX_FRAMES

#: Dtypes JAX keeps as they are without x64.
DTYPES = [np.float32, np.int32, np.int8, np.uint8, np.uint32, np.float16, np.bool_, np.complex64]

shapes = st.lists(st.integers(0, 3), max_size=2).map(tuple)
leaf_kinds = st.tuples(st.sampled_from(DTYPES), shapes)
state_kinds = st.dictionaries(
    st.text(string.ascii_lowercase, min_size=1, max_size=2), leaf_kinds, min_size=1, max_size=4
)


def random_leaf(dtype: Any, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype is np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if dtype is np.complex64:
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 100, shape).astype(dtype)


def make_state(kinds: dict[str, Any], rng: np.random.Generator, *, on_device: bool = True) -> Any:
    state = {k: random_leaf(dtype, shape, rng) for k, (dtype, shape) in kinds.items()}
    return {k: jnp.asarray(v) for k, v in state.items()} if on_device else state


def make_view(kind: str, keys: list[str]) -> Any:
    first = keys[0]
    if kind == "pick":
        return view(lambda s: s[first])
    if kind == "dict":
        return view(lambda s: {f"v{i}": s[k] for i, k in enumerate(keys)})
    if kind == "compute":
        return view(lambda s: s[first] + s[first])
    # Mixed: a selection, a computed leaf and the same leaf twice.
    return view(lambda s: {"p": s[first], "c": s[keys[-1]] + s[keys[-1]], "q": s[first]})


@st.composite
def runs(draw: st.DrawFn) -> tuple[Any, ...]:
    kinds = draw(state_kinds)
    names = sorted(kinds)
    groups = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["pick", "dict", "compute", "mixed"]),
                st.lists(st.sampled_from(names), min_size=1, max_size=3),
                st.one_of(st.integers(1, 3).map(EveryNStep), st.just(Once())),
            ),
            min_size=1,
            max_size=4,
        )
    )
    steps = draw(st.integers(1, 8))
    numpy_steps = draw(st.sets(st.integers(0, steps - 1), max_size=2))
    seed = draw(st.integers(0, 2**32 - 1))
    return kinds, groups, steps, numpy_steps, seed


def file_contents(path: Any) -> dict[str, Any]:
    """Every dataset's dtype, shape and bytes, and the root attributes (but the time)."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                out[name] = (data.dtype.str, np.shape(data), np.asarray(data).tobytes())

        f.visititems(visit)
        out["attrs"] = {k: str(v) for k, v in f.attrs.items() if k not in ("created", "generation")}
    return out


@settings(max_examples=15)
@given(runs())
def test_every_extraction_writes_the_same_file(tmp_path_factory, run):
    kinds, groups, steps, numpy_steps, seed = run
    config = {
        f"g{i}": WriterGroupConfig(make_view(kind, keys), frequency, compression=None)
        for i, (kind, keys, frequency) in enumerate(groups)
    }
    rng = np.random.default_rng(seed)
    states = [make_state(kinds, rng, on_device=i not in numpy_steps) for i in range(steps)]
    directory = tmp_path_factory.mktemp("modes")
    contents = {}
    for mode in EXTRACTIONS:
        path = directory / f"{mode}.h5"
        with HDF5StorageWriter(path, config, states[0], steps, extraction=mode) as writer:
            for step, state in enumerate(states):
                writer.log(state, step)
        contents[mode] = file_contents(path)
    assert contents["auto"] == contents["per_group"]
    assert contents["fused"] == contents["per_group"]


# ------------------------------------------------------- errors, unchanged


@jax.tree_util.register_dataclass
@dataclass
class State:
    pos: Any
    energy: Any


@jax.tree_util.register_dataclass
@dataclass
class OtherState:
    pos: Any
    energy: Any
    extra: Any


def good_state(step: int) -> State:
    return State(jnp.full((4, 3), step, jnp.float32), jnp.float32(step))


CONFIG = {
    "traj": WriterGroupConfig(view(lambda s: {"pos": s.pos}), EveryNStep(1)),
    "energy": WriterGroupConfig(view(lambda s: s.energy), EveryNStep(1)),
    "twice": WriterGroupConfig(view(lambda s: s.pos * 2), EveryNStep(2)),
}

BAD_STATES = {
    "wrong shape": State(jnp.zeros((5, 3), jnp.float32), jnp.float32(0)),
    "wrong dtype": State(jnp.zeros((4, 3), jnp.int32), jnp.float32(0)),
    "wrong scalar dtype": State(jnp.zeros((4, 3), jnp.float32), jnp.int32(0)),
    "wrong structure": State(jnp.zeros((4, 3), jnp.float32), {"e": jnp.float32(0)}),
    "another state class": OtherState(jnp.zeros((4, 3)), jnp.float32(0), jnp.float32(0)),
    "a dict": {"pos": jnp.zeros((4, 3)), "energy": jnp.float32(0)},
    "a Python float": State(jnp.zeros((4, 3), jnp.float32), 1.5),
    "numpy leaves": State(np.zeros((4, 3), np.float32), np.float32(7)),
    "big-endian numpy": State(np.zeros((4, 3), ">f4"), np.float32(7)),
}


def outcome(mode: str, bad: Any, path: Any) -> tuple[Any, ...]:
    """What logging ``bad`` between good states does: the error (or none) and the file."""
    error = None
    with HDF5StorageWriter(path, CONFIG, good_state(0), 8, extraction=mode) as writer:
        writer.log(good_state(0), 0)
        try:
            writer.log(bad, 1)
        except Exception as e:
            error = (type(e), str(e))
        writer.log(good_state(2), 2)  # a refused step stays free; this one always works
    return error, file_contents(path)


@pytest.mark.parametrize("bad", list(BAD_STATES), ids=list(BAD_STATES))
def test_bad_states_fail_in_log_as_with_per_group_views(bad, tmp_path):
    outcomes = {
        mode: outcome(mode, BAD_STATES[bad], tmp_path / f"{mode}.h5") for mode in EXTRACTIONS
    }
    assert outcomes["auto"] == outcomes["per_group"]
    assert outcomes["fused"] == outcomes["per_group"]
    error = outcomes["per_group"][0]
    if bad.startswith("wrong"):
        assert error is not None and issubclass(error[0], E.FrameMismatchError), error


def test_selections_are_found_in_the_views_jaxpr():
    config = {
        "pos": WriterGroupConfig(view(lambda s: {"p": s.pos, "e": s.energy}), EveryNStep(1)),
        "sum": WriterGroupConfig(view(lambda s: s.pos.sum()), EveryNStep(1)),
        "mixed": WriterGroupConfig(view(lambda s: (s.energy * 2, s.pos)), EveryNStep(1)),
    }
    groups, _ = prepare_groups(config, good_state(0), 4)
    # Groups and dict keys in sorted order: mixed, pos ({'e', 'p'}), sum.
    assert [g.sources for g in groups] == [(None, 0), (1, 0), (None,)]
    uncompiled, _ = prepare_groups(config, good_state(0), 4, compile_views=False)
    assert [g.sources for g in uncompiled] == [(), (), ()]


def test_a_converted_leaf_is_not_a_selection():
    """A float64 numpy leaf comes out of a compiled view as float32: computed, not picked."""
    state = {"x": np.arange(3, dtype=np.float64)}
    config = {"x": WriterGroupConfig(view(lambda s: s["x"]), EveryNStep(1))}
    groups, spec = prepare_groups(config, state, 4)
    assert groups[0].sources == (None,)
    assert spec.groups[0].leaves[0].dtype == "float32"


@pytest.mark.parametrize("mode", EXTRACTIONS)
def test_frames_survive_the_state_being_donated(mode, tmp_path):
    """Host copies are taken before log() returns: donating the state after is safe."""
    advance = jax.jit(lambda s: State(s.pos + 1, s.energy + 1), donate_argnums=0)
    state = good_state(0)
    with HDF5StorageWriter(tmp_path / "r.h5", CONFIG, state, 6, extraction=mode) as writer:
        for step in range(6):
            writer.log(state, step)
            old = state
            state = advance(state)
            assert old.pos.is_deleted()  # really donated
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        np.testing.assert_array_equal(
            reader.focus_group("group['traj']")[:]["pos"][:, 0, 0], range(6)
        )
        np.testing.assert_array_equal(reader.focus_group("group['energy']")[:], range(6))
        np.testing.assert_array_equal(reader.focus_group("group['twice']")[:][:, 0, 0], [0, 4, 8])


@pytest.mark.parametrize("mode", EXTRACTIONS)
def test_a_step_past_the_last_frame_is_refused_and_takes_nothing(mode, tmp_path):
    """Frame indices stop at MAX_FRAMES - 1 for every group, whichever path runs."""
    last = MAX_FRAMES - 1  # the last frame of the groups logged every step
    with HDF5StorageWriter(tmp_path / "r.h5", CONFIG, good_state(0), 4, extraction=mode) as writer:
        writer.log(good_state(0), 0)
        with pytest.raises(E.StepOrderError, match="would be frame"):
            writer.log(good_state(1), last + 1)
        writer.log(good_state(1), 1)  # a refused step stays free
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        np.testing.assert_array_equal(reader.focus_group("group['energy']")[:], [0, 1])


def test_an_unknown_extraction_is_refused(tmp_path):
    with pytest.raises(ValueError, match="extraction"):
        HDF5StorageWriter(tmp_path / "r.h5", CONFIG, good_state(0), extraction="fast")  # type: ignore[arg-type]

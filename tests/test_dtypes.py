"""Every supported dtype round-trips exactly; anything else is refused at __enter__."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from trajstore import (
    EveryNStep,
    HDF5StorageReader,
    HDF5StorageWriter,
    Once,
    WriterGroupConfig,
    view,
)
from trajstore.errors import SchemaError
from trajstore.schema import SUPPORTED_DTYPES, numpy_dtype

NUMPY_DTYPES = [d for d in SUPPORTED_DTYPES if d != "bfloat16"]


def sample(dtype: np.dtype, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.random(shape) > 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return (rng.standard_normal(shape) * 1e3).astype(dtype)


def round_trip(tmp_path, states, read, compile_views=False, frequency=None):
    config = {"g": WriterGroupConfig(view(lambda s: s), frequency or EveryNStep(1))}
    with HDF5StorageWriter(
        tmp_path / "d.h5", config, states[0], len(states), compile_views=compile_views
    ) as log:
        for step, state in enumerate(states):
            log.log(state, step)
    with HDF5StorageReader(tmp_path / "d.h5") as reader:
        return read(reader.focus_group("group['g']"))


@pytest.mark.parametrize("name", NUMPY_DTYPES)
def test_numpy_dtypes_round_trip_exactly(tmp_path, name):
    dtype = numpy_dtype(name)
    states = [{"a": sample(dtype, (3, 2), i), "s": sample(dtype, (), i)[()]} for i in range(5)]
    config = {"g": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    with HDF5StorageWriter(tmp_path / "d.h5", config, states[0], 5, compile_views=False) as log:
        for step, state in enumerate(states):
            log.log(state, step)
    with HDF5StorageReader(tmp_path / "d.h5") as reader:
        stored = reader.focus_group("group['g']")[:]
    assert stored["a"].dtype == dtype and stored["s"].dtype == dtype
    np.testing.assert_array_equal(stored["a"], np.stack([s["a"] for s in states]))
    np.testing.assert_array_equal(stored["s"], np.stack([s["s"] for s in states]))


def test_jax_bfloat16_round_trips(tmp_path):
    states = [jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3) * (i + 0.5) for i in range(4)]
    config = {"g": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    with HDF5StorageWriter(tmp_path / "b.h5", config, states[0], 4) as log:
        for step, state in enumerate(states):
            log.log(state, step)
    with HDF5StorageReader(tmp_path / "b.h5") as reader:
        stored = reader.focus_group("group['g']")[:]
    assert stored.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(stored.view(np.uint16), np.stack(states).view(np.uint16))


@pytest.mark.parametrize("compile_views", [True, False])
def test_jax_arrays_and_scalars(tmp_path, compile_views):
    states = [{"x": jnp.full((2,), i, jnp.int32), "e": jnp.float32(i / 2)} for i in range(3)]
    stored = round_trip(tmp_path, states, lambda g: g[:], compile_views=compile_views)
    np.testing.assert_array_equal(stored["x"][:, 0], [0, 1, 2])
    assert stored["e"].dtype == np.float32
    np.testing.assert_array_equal(stored["e"], [0, 0.5, 1])


def test_zero_length_axes(tmp_path):
    states = [{"empty": np.zeros((0, 3), np.float32), "x": np.float64(i)} for i in range(3)]
    length, stored, one = round_trip(tmp_path, states, lambda g: (len(g), g[:], g[1]))
    assert length == 3
    assert stored["empty"].shape == (3, 0, 3)
    assert one["empty"].shape == (0, 3)


def test_zero_length_once_leaf(tmp_path):
    value = round_trip(tmp_path, [np.zeros((4, 0), np.int8)], lambda g: g[...], frequency=Once())
    assert value.shape == (4, 0)


def test_big_endian_input_is_stored_little_endian(tmp_path):
    states = [np.arange(4, dtype=">i4") + i for i in range(2)]
    stored = round_trip(tmp_path, states, lambda g: g[:])
    assert stored.dtype == np.dtype("<i4")
    np.testing.assert_array_equal(stored, [[0, 1, 2, 3], [1, 2, 3, 4]])


@pytest.mark.parametrize(
    ("leaf", "message"),
    [
        ("text", "str"),
        (np.array(["a", "b"]), "unsupported dtype"),
        (np.array([object()], dtype=object), "unsupported dtype"),
        ([1.0, 2.0], "Python float"),
        (3.0, "Python float"),
        (
            np.zeros(2, np.float128) if hasattr(np, "float128") else np.zeros(2, "M8[s]"),
            "unsupported",
        ),
    ],
)
def test_unstorable_leaves_are_refused_at_enter(tmp_path, leaf, message):
    config = {"g": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    writer = HDF5StorageWriter(tmp_path / "x.h5", config, {"v": leaf}, 3, compile_views=False)
    with pytest.raises(SchemaError, match=message):
        writer.__enter__()
    assert not (tmp_path / "x.h5").exists()

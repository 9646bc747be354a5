"""Resuming a run: append continues it; resuming from an earlier step overwrites from there."""

from __future__ import annotations

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
from trajstore.errors import RunNotFoundError, SchemaError

CONFIG = {
    "x": WriterGroupConfig(view(lambda s: s["x"]), EveryNStep(2)),
    "c": WriterGroupConfig(view(lambda s: s["c"]), Once()),
}


def state(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full(3, value, np.float32), "c": np.int32(7)}


def log_steps(path, steps, mode):
    with HDF5StorageWriter(path, CONFIG, state(0), 100, mode=mode, compile_views=False) as w:
        for step in steps:
            w.log(state(step), step)
    return w.resumed_frames


def stored(path):
    with HDF5StorageReader(path) as reader:
        return reader.focus_group("group['x']")[:, 0], reader.actual_steps


def test_append_continues_a_closed_run(tmp_path):
    path = tmp_path / "r.h5"
    assert log_steps(path, range(0, 10), "create") == {"group['x']": 0, "group['c']": 0}
    # as the remote writer: where each group stood when the run was opened
    assert log_steps(path, range(10, 20), "append") == {"group['x']": 5, "group['c']": 1}
    values, actual = stored(path)
    np.testing.assert_array_equal(values, np.arange(0, 20, 2))
    assert actual == 20
    with HDF5StorageReader(path) as reader:
        assert reader.focus_group("group['c']")[...] == 7


def test_resuming_from_an_earlier_step_overwrites_from_there(tmp_path):
    path = tmp_path / "r.h5"
    log_steps(path, range(0, 20), "create")
    log_steps(path, range(8, 12), "append")  # restarted from a checkpoint at step 8
    values, _ = stored(path)
    np.testing.assert_array_equal(values, [0, 2, 4, 6, 8, 10])


def test_append_needs_a_matching_schema(tmp_path):
    path = tmp_path / "r.h5"
    log_steps(path, range(4), "create")
    other = {"x": WriterGroupConfig(view(lambda s: s["x"][:2]), EveryNStep(2)), "c": CONFIG["c"]}
    with pytest.raises(SchemaError, match="different schema"):
        HDF5StorageWriter(path, other, state(0), 10, mode="append", compile_views=False).__enter__()
    fewer = {"x": CONFIG["x"]}
    with pytest.raises(SchemaError, match="groups"):
        HDF5StorageWriter(path, fewer, state(0), 10, mode="append", compile_views=False).__enter__()
    values, _ = stored(path)
    np.testing.assert_array_equal(values, [0, 2])


def test_append_to_nothing(tmp_path):
    with pytest.raises(RunNotFoundError):
        log_steps(tmp_path / "absent.h5", [0], "append")

"""Bad input to the writers gets a typed error and changes nothing: local and remote alike."""

from __future__ import annotations

import numpy as np
import pytest

from trajstore import (
    EveryNStep,
    HDF5StorageReader,
    HDF5StorageWriter,
    RemoteStorageWriter,
    WriterGroupConfig,
    view,
)
from trajstore import errors as E

from helpers import md_config, md_state

KINDS = ["local", "remote"]


def open_writer(kind, tmp_path, store, config, state, run="input/run", **kwargs):
    """A local writer in ``tmp_path`` or a remote one on ``store``; and the file it writes."""
    if kind == "local":
        path = tmp_path / "run.h5"
        return HDF5StorageWriter(path, config, state, compile_views=False, **kwargs), path
    writer = RemoteStorageWriter(
        store.address, run, config, state, compile_views=False, mode="overwrite", **kwargs
    )
    return writer, store.run_file(run)


def frames_in(path, group="group['energy']"):
    with HDF5StorageReader(path) as reader:
        return len(reader.focus_group(group))


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_log_leaves_its_step_free(kind, tmp_path, store):
    state = md_state()
    writer, path = open_writer(kind, tmp_path, store, md_config(every=1), state)
    with writer:
        writer.log(state, 0)
        with pytest.raises(E.FrameMismatchError):
            writer.log({**state, "pos": np.zeros((3, 3), np.float32)}, 1)
        writer.log(state, 1)  # the same step again, now well formed
    assert frames_in(path) == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("step", [True, np.bool_(True), 1.0, "1", 2**62])
def test_bad_steps_are_refused_and_keep_what_was_logged(kind, step, tmp_path, store):
    state = md_state()
    writer, path = open_writer(kind, tmp_path, store, md_config(every=1), state)
    with writer:
        writer.log(state, 0)
        with pytest.raises(E.StepOrderError):
            writer.log(state, step)
        writer.log(state, 1)
    assert frames_in(path) == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("total_steps", [-5, 10.5, "10", True])
def test_a_bad_total_steps_is_refused_at_enter(kind, total_steps, tmp_path, store):
    state = md_state()
    writer, path = open_writer(kind, tmp_path, store, md_config(), state, total_steps=total_steps)
    with pytest.raises(E.SchemaError, match="total_steps"), writer:
        pass
    assert not path.exists()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_pending_bytes", 0),
        ("max_pending_bytes", 1.5),
        ("max_pending_bytes", True),
    ],
)
def test_bad_settings_are_refused_when_the_writer_is_made(kind, setting, value, tmp_path, store):
    with pytest.raises(E.InvalidArgumentError, match=setting):
        open_writer(kind, tmp_path, store, md_config(), md_state(), **{setting: value})


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), "x"])
def test_a_bad_flush_interval_is_refused_when_the_writer_is_made(value, tmp_path):
    with pytest.raises(E.InvalidArgumentError, match="flush_interval"):
        HDF5StorageWriter(tmp_path / "r.h5", md_config(), md_state(), flush_interval=value)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: WriterGroupConfig(view(lambda s: s), EveryNStep(1), compression="zstd"), "compr"),
        (lambda: WriterGroupConfig(view(lambda s: s), 5), "logging_frequency"),
        (lambda: WriterGroupConfig("pos", EveryNStep(1)), "view"),
    ],
)
def test_a_malformed_group_config_is_refused_when_made(make, error):
    with pytest.raises(E.SchemaError, match=error):
        make()


def test_an_unstorable_schema_leaves_an_existing_run_untouched(tmp_path):
    path = tmp_path / "run.h5"
    state = md_state()
    with HDF5StorageWriter(path, md_config(every=1), state, compile_views=False) as writer:
        for step in range(3):
            writer.log(state, step)
    deep = {"x": np.zeros((1,) * 32, np.float32)}  # 32 dimensions and a time axis: too many
    config = {"x": WriterGroupConfig(view(lambda s: s["x"]), EveryNStep(1))}
    for mode in ("overwrite", "create"):
        target = path if mode == "overwrite" else tmp_path / "new.h5"
        with pytest.raises(E.SchemaError, match="HDF5 stores at most 32"):
            with HDF5StorageWriter(target, config, deep, compile_views=False, mode=mode):
                pass
    assert frames_in(path) == 3  # the run is as it was
    # nothing half made (the lock file stays beside the run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5", "run.h5.lock"]


def test_a_failure_while_laying_out_a_new_run_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    state = md_state()
    with HDF5StorageWriter(path, md_config(every=1), state, compile_views=False) as writer:
        writer.log(state, 0)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("trajstore.store.writer.Hdf5ObjWriter.create", fail)
    with pytest.raises(E.StorageError, match="No space left"):
        with HDF5StorageWriter(path, md_config(every=1), state, compile_views=False):
            pass
    assert frames_in(path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5", "run.h5.lock"]


@pytest.mark.parametrize("kind", KINDS)
def test_big_endian_leaves_are_stored_little_endian(kind, tmp_path, store):
    state = {"x": np.arange(3, dtype=">f4")}
    config = {"x": WriterGroupConfig(view(lambda s: s["x"]), EveryNStep(1))}
    writer, path = open_writer(kind, tmp_path, store, config, state)
    with writer:
        writer.log(state, 0)
    with HDF5StorageReader(path) as reader:
        frame = reader.focus_group("group['x']")[0]
    assert frame.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(frame, [0, 1, 2])


@pytest.mark.parametrize("returned", [1.5, [1.0, 2.0], "abc"])
def test_a_compiled_view_returning_python_values_is_refused_at_enter(returned, tmp_path):
    config = {"x": WriterGroupConfig(view(lambda s: returned), EveryNStep(1))}
    with pytest.raises(E.SchemaError):
        with HDF5StorageWriter(tmp_path / "r.h5", config, md_state()):
            pass


@pytest.mark.parametrize("kind", KINDS)
def test_a_writer_opens_once(kind, tmp_path, store):
    state = md_state()
    writer, _ = open_writer(kind, tmp_path, store, md_config(), state)
    with writer:
        writer.log(state, 0)
    with pytest.raises(E.NotOpenError, match="opens once"), writer:
        pass


def test_overwriting_a_run_through_a_symlink_writes_its_target(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    link = tmp_path / "run.h5"
    link.symlink_to(scratch / "real.h5")
    state = md_state()
    for steps in (3, 5):  # created through the link, then overwritten through it
        with HDF5StorageWriter(link, md_config(every=1), state, compile_views=False) as writer:
            for step in range(steps):
                writer.log(state, step)
    assert link.is_symlink() and (scratch / "real.h5").is_file()
    assert frames_in(scratch / "real.h5") == 5
    assert sorted(p.name for p in scratch.iterdir()) == ["real.h5", "real.h5.lock"]

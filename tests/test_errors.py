"""Misuse gets a clear, typed error (also under ``python -O``), and changes nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from trajstore import HDF5StorageReader, HDF5StorageWriter, TrajstoreError
from trajstore import errors as E

from helpers import md_config, md_state


def test_every_error_derives_from_trajstore_error_and_a_builtin():
    assert issubclass(E.GroupNotFoundError, KeyError)
    assert issubclass(E.RunNotFoundError, KeyError)
    assert issubclass(E.FrameIndexError, IndexError)
    assert issubclass(E.FrameMismatchError, ValueError)
    assert issubclass(E.StepOrderError, ValueError)
    assert issubclass(E.RunExistsError, FileExistsError)
    assert issubclass(E.NotOpenError, RuntimeError)
    assert issubclass(E.StorageError, OSError)
    assert issubclass(E.JournalError, OSError)
    for name in E.__all__:
        obj = getattr(E, name)
        if isinstance(obj, type) and issubclass(obj, Warning):
            assert name.endswith("Warning")
        elif isinstance(obj, type):
            assert issubclass(obj, TrajstoreError)
            assert E.error_class_for(name) is obj
            assert obj.status.isupper()
    assert E.error_class_for("SystemExit") is None


def test_not_found_messages_are_not_quoted_like_key_errors():
    assert str(E.GroupNotFoundError("no group 'x'")) == "no group 'x'"


@pytest.fixture
def writer(tmp_path):
    return HDF5StorageWriter(tmp_path / "r.h5", md_config(), md_state(), 10)


def test_log_outside_with_block(writer):
    with pytest.raises(E.NotOpenError, match="with"):
        writer.log(md_state(), 0)
    with pytest.raises(E.NotOpenError):
        writer.flush()


@pytest.mark.parametrize(
    ("steps", "match"),
    [([3, 2], "increase"), ([4, 4], "increase"), ([-1], "non-negative"), ([1.5], "integer")],
)
def test_bad_steps(writer, steps, match):
    state = md_state()
    with writer:
        with pytest.raises(E.StepOrderError, match=match):
            for step in steps:
                writer.log(state, step)


def test_reader_errors(tmp_path):
    state = md_state()
    with HDF5StorageWriter(tmp_path / "r.h5", md_config(every=1), state, 5) as log:
        for step in range(5):
            log.log(state, step)
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        with pytest.raises(KeyError, match="group\\['nope'\\]"):
            reader.focus_group("group['nope']")
        with pytest.raises(E.GroupNotFoundError):
            reader.focus_group(lambda c: c["nope"])
        traj = reader.focus_group("group['traj']")
        with pytest.raises(IndexError, match="out of bounds"):
            traj[5]
        with pytest.raises(IndexError):
            traj[-6]
        with pytest.raises(IndexError, match="too many indices"):
            traj[0, 0, 0, 0]
        for bad in (0, -1, 2.5):
            with pytest.raises(ValueError, match="chunk_size"):
                traj.read_chunked(bad)
        with pytest.raises(E.SchemaError, match="select"):
            traj.read(select=lambda s: 3)
        assert len(traj) == 5  # nothing changed
    with pytest.raises(E.NotOpenError):
        traj[0]
    with pytest.raises(E.NotOpenError):
        reader.list_groups()


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(E.RunNotFoundError), HDF5StorageReader(tmp_path / "absent.h5"):
        pass
    import h5py

    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    with (
        pytest.raises(E.SchemaError, match="not a trajstore"),
        HDF5StorageReader(tmp_path / "foreign.h5"),
    ):
        pass


def test_a_group_without_its_frame_count_is_a_schema_error(tmp_path):
    import h5py

    with HDF5StorageWriter(tmp_path / "r.h5", md_config(), md_state(), 4) as writer:
        for step in range(4):
            writer.log(md_state(), step)
    with h5py.File(tmp_path / "r.h5", "a") as f:
        del f["traj"].attrs["frames"]
    with HDF5StorageReader(tmp_path / "r.h5") as reader:
        assert len(reader.focus_group("group['energy']")) == 4  # the other groups still read
        with pytest.raises(E.SchemaError, match="frame count"):
            reader.focus_group("group['traj']").read(0)


def test_create_mode_refuses_an_existing_file(tmp_path):
    (tmp_path / "r.h5").write_bytes(b"precious")
    writer = HDF5StorageWriter(tmp_path / "r.h5", md_config(), md_state(), 10, mode="create")
    with pytest.raises(E.RunExistsError):
        writer.__enter__()
    assert (tmp_path / "r.h5").read_bytes() == b"precious"


def test_bad_config_and_metadata(tmp_path):
    with pytest.raises(E.SchemaError, match="WriterGroupConfig"):
        HDF5StorageWriter(tmp_path / "r.h5", {"a": 1}, md_state(), 1).__enter__()
    with pytest.raises(E.SchemaError, match="metadata"):
        HDF5StorageWriter(
            tmp_path / "r.h5", md_config(), md_state(), 1, metadata={"f": object()}
        ).__enter__()
    with pytest.raises(ValueError, match="mode"):
        HDF5StorageWriter(tmp_path / "r.h5", md_config(), md_state(), 1, mode="w")  # type: ignore[arg-type]
    assert not (tmp_path / "r.h5").exists()


def test_checks_survive_python_dash_o(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from helpers import md_config, md_state
        from trajstore import HDF5StorageWriter
        from trajstore.errors import StepOrderError, NotOpenError
        w = HDF5StorageWriter({str(tmp_path / "o.h5")!r}, md_config(), md_state(), 5)
        try:
            w.log(md_state(), 0)
        except NotOpenError:
            pass
        else:
            sys.exit("no NotOpenError")
        with w:
            w.log(md_state(), 3)
            try:
                w.log(md_state(), 2)
            except StepOrderError:
                print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

"""RemoteStorageWriter against a real server process: the same files as the local writer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from trajstore import (
    EveryNStep,
    HDF5StorageReader,
    Logger,
    RemoteStorageWriter,
    WriterGroupConfig,
    view,
)
from trajstore import errors as E

from helpers import advance, md_config, md_state

CLIENT = Path(__file__).parent / "clients" / "run_writer.py"


#: Attributes HDF5's dimension scales keep, holding object references.
_REFERENCES = ("DIMENSION_LIST", "REFERENCE_LIST")


def _plain_attrs(obj: h5py.HLObject) -> dict[str, object]:
    return {k: v for k, v in obj.attrs.items() if k not in _REFERENCES}


def _scales(ds: h5py.Dataset) -> list[list[str]]:
    """The names of the dimension scales of each axis (a scale itself has none)."""
    if ds.is_scale:
        return []
    return [[scale.name for scale in dim.values()] for dim in ds.dims]


def assert_same_file(remote: Path, local: Path) -> None:
    """Dataset by dataset, attribute by attribute."""
    with h5py.File(remote, "r") as a, h5py.File(local, "r") as b:
        # When each was written, and each file's own version: the attributes that differ.
        own = ("created", "generation")
        assert {k: v for k, v in a.attrs.items() if k not in own} == {
            k: v for k, v in b.attrs.items() if k not in own
        }
        names_a: list[str] = []
        names_b: list[str] = []
        a.visit(names_a.append)
        b.visit(names_b.append)
        assert names_a == names_b
        for name in names_a:
            x, y = a[name], b[name]
            assert _plain_attrs(x) == _plain_attrs(y), name
            if isinstance(x, h5py.Dataset):
                # netCDF dimensions: the same scales, by name (references are file offsets)
                assert _scales(x) == _scales(y), name
                assert (x.shape, x.dtype, x.chunks, x.compression) == (
                    y.shape,
                    y.dtype,
                    y.chunks,
                    y.compression,
                ), name
                np.testing.assert_array_equal(x[()], y[()], err_msg=name)


def test_four_client_processes_write_the_files_the_local_writer_writes(store, tmp_path):
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(CLIENT),
                "--address",
                store.address,
                "--run",
                f"proj/r{i}",
                "--seed",
                str(i),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for i in range(4):
        subprocess.run(
            [sys.executable, str(CLIENT), "--local", str(tmp_path / f"r{i}.h5"), "--seed", str(i)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    for i in range(4):
        remote = store.run_file(f"proj/r{i}")
        assert_same_file(remote, tmp_path / f"r{i}.h5")
        with HDF5StorageReader(remote) as reader:
            assert reader.metadata == {"seed": i}
            assert reader.actual_steps == 120
            assert len(reader.focus_group("group['traj']")) == 40


def test_remote_writer_is_a_logger_and_flush_means_durable(store):
    state = md_state()
    writer = RemoteStorageWriter(store.address, "a/b", md_config(every=1), state, 10)
    assert isinstance(writer, Logger)
    with writer as log:
        for step in range(5):
            state = advance(state, step)
            log.log(state, step)
        log.flush()
        # Durable means readable from the file right now, by another handle.
        with HDF5StorageReader(store.run_file("a/b")) as reader:
            energy = reader.focus_group("group['energy']")
            assert len(energy) == 5
            np.testing.assert_array_equal(energy[:], np.arange(5) * 0.25)


@pytest.mark.parametrize("group", [3, -1])
def test_the_sender_refuses_a_group_the_run_lacks_and_goes_on(store, group):
    state = md_state()
    with RemoteStorageWriter(store.address, "a/lacks", md_config(every=1), state, 10) as log:
        log.log(state, 0)
        energy = np.float32(1.0)
        sender = log._sender  # what log() feeds: frames as (group, index, leaves)
        assert sender is not None
        with pytest.raises(E.GroupNotFoundError):  # negative positions do not wrap around
            sender.put_frames([(1, 1, (energy,)), (group, 1, (energy,))])
        with pytest.raises(E.GroupNotFoundError):
            sender.put_block(group, 1, 1, energy.tobytes(), 2)
        log.log(advance(state, 1), 1)  # the refused call queued nothing
        log.flush()
    with HDF5StorageReader(store.run_file("a/lacks")) as reader:
        assert len(reader.focus_group("group['energy']")) == 2


def test_a_256_mib_frame_round_trips(store):
    frame = np.arange(64 << 20, dtype=np.float32).reshape(-1, 4)  # 256 MiB
    config = {"big": WriterGroupConfig(view(lambda s: s), EveryNStep(1), compression=None)}
    with RemoteStorageWriter(store.address, "big", config, frame, 2, compile_views=False) as log:
        log.log(frame, 0)
        log.log(frame[::-1], 1)
    with HDF5StorageReader(store.run_file("big")) as reader:
        big = reader.focus_group("group['big']")
        assert len(big) == 2
        np.testing.assert_array_equal(big[0], frame)
        np.testing.assert_array_equal(big[1, :3], frame[::-1][:3])
        np.testing.assert_array_equal(big[1, -1], frame[0])


def test_second_writer_and_create_on_existing_are_refused(store):
    state = md_state()
    with RemoteStorageWriter(store.address, "held", md_config(), state, 4) as first:
        first.log(state, 0)
        second = RemoteStorageWriter(store.address, "held", md_config(), state, 4, mode="overwrite")
        with pytest.raises(E.RunLockedError, match="another writer"):
            second.__enter__()
        first.log(state, 1)
    with pytest.raises(E.RunExistsError, match="already exists"):
        RemoteStorageWriter(store.address, "held", md_config(), state, 4).__enter__()
    with HDF5StorageReader(store.run_file("held")) as reader:
        assert reader.actual_steps == 2


HOSTILE = [
    "../x",
    "/abs",
    "a/../../b",
    "a\x00b",
    "",
    "x" * 300,
    "a//b",
    ".",
    "a/./b",
    "a/",
    "\uff52\uff55\uff4e",  # fullwidth look-alikes of "run"
    "run name",
    "a\\b",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_run_names_are_refused_and_nothing_is_written(store, name):
    before = sorted(p.relative_to(store.data_dir.parent) for p in store.data_dir.parent.rglob("*"))
    with pytest.raises(E.InvalidRunNameError):
        RemoteStorageWriter(store.address, name, md_config(), md_state(), 4).__enter__()
    after = sorted(p.relative_to(store.data_dir.parent) for p in store.data_dir.parent.rglob("*"))
    assert after == before


def test_bad_frames_are_caught_in_log_before_sending(store):
    config = {"x": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    with RemoteStorageWriter(
        store.address, "bad", config, np.zeros(3, np.float32), 5, compile_views=False
    ) as log:
        log.log(np.ones(3, np.float32), 0)
        with pytest.raises(E.FrameMismatchError):
            log.log(np.ones(4, np.float32), 1)
        with pytest.raises(E.FrameMismatchError):
            log.log(np.ones(3, np.int32), 2)
        with pytest.raises(E.StepOrderError):
            log.log(np.ones(3, np.float32), 0)
        log.log(np.full(3, 2, np.float32), 3)
    with HDF5StorageReader(store.run_file("bad")) as reader:
        x = reader.focus_group("group['x']")
        assert len(x) == 4  # steps 1 and 2 were refused: frames 1 and 2 are a gap
        np.testing.assert_array_equal(x[0], [1, 1, 1])
        np.testing.assert_array_equal(x[3], [2, 2, 2])


def test_append_resumes_and_rewinding_overwrites(store):
    config = {"x": WriterGroupConfig(view(lambda s: s), EveryNStep(2))}

    def write(steps, mode):
        with RemoteStorageWriter(
            store.address, "resume", config, np.zeros(2), 100, mode=mode, compile_views=False
        ) as log:
            for step in steps:
                log.log(np.full(2, float(step)), step)
            return log.resumed_frames

    assert write(range(10), "create") == {"group['x']": 0}
    assert write(range(10, 20), "append") == {"group['x']": 5}
    with HDF5StorageReader(store.run_file("resume")) as reader:
        np.testing.assert_array_equal(reader.focus_group("group['x']")[:, 0], range(0, 20, 2))
        assert reader.actual_steps == 20
    assert write(range(6, 9), "append") == {
        "group['x']": 10
    }  # restarted from a checkpoint at step 6
    with HDF5StorageReader(store.run_file("resume")) as reader:
        np.testing.assert_array_equal(reader.focus_group("group['x']")[:, 0], [0, 2, 4, 6, 8])
    with pytest.raises(E.RunNotFoundError):
        write(range(3), "append") if False else RemoteStorageWriter(
            store.address, "never", config, np.zeros(2), 1, mode="append", compile_views=False
        ).__enter__()
    other = {"x": WriterGroupConfig(view(lambda s: s), EveryNStep(2))}
    with pytest.raises(E.SchemaError, match="schema"):
        RemoteStorageWriter(
            store.address, "resume", other, np.zeros(3), 1, mode="append", compile_views=False
        ).__enter__()


def test_the_server_process_never_loads_jax(store):
    state = md_state()
    with RemoteStorageWriter(store.address, "nojax", md_config(), state, 4) as log:
        for step in range(4):
            log.log(state, step)
    maps = Path(f"/proc/{store.process.pid}/maps").read_text()
    assert "jaxlib" not in maps
    assert "h5py" in maps  # the check can see what the server did load


def test_unreachable_store_is_a_typed_error(tmp_path):
    writer = RemoteStorageWriter("127.0.0.1:1", "x", md_config(), md_state(), 4, timeout=5)
    with pytest.raises(E.UnavailableError):
        writer.__enter__()


def test_metadata_and_spec_travel(store):
    state = md_state()
    with RemoteStorageWriter(
        store.address, "meta", md_config(), state, 4, metadata={"T": 300, "tags": ["a", "b"]}
    ) as log:
        log.log(state, 0)
    with h5py.File(store.run_file("meta"), "r") as f:
        assert json.loads(f.attrs["metadata"]) == {"T": 300, "tags": ["a", "b"]}
        assert f.attrs["total_steps"] == 4


def test_log_blocks_while_the_store_is_stalled_and_drops_nothing(store):
    import os
    import signal
    import threading

    frame_bytes = 64 * 1024
    config = {"x": WriterGroupConfig(view(lambda s: s), EveryNStep(1), compression=None)}
    first = np.zeros(frame_bytes // 4, np.float32)
    logged: list[int] = []
    with RemoteStorageWriter(
        store.address,
        "stall",
        config,
        first,
        100,
        compile_views=False,
        max_pending_bytes=8 * frame_bytes,
        send_interval=0.01,
    ) as log:
        log.log(first, 0)
        log.flush()
        os.kill(store.process.pid, signal.SIGSTOP)  # the store stops answering
        try:

            def produce():
                for step in range(1, 60):
                    log.log(np.full(frame_bytes // 4, step, np.float32), step)
                    logged.append(step)

            producer = threading.Thread(target=produce)
            producer.start()
            producer.join(1.0)
            assert producer.is_alive(), "log() did not block with the store stalled"
            assert len(logged) <= 8
        finally:
            os.kill(store.process.pid, signal.SIGCONT)
        producer.join(120)
        assert not producer.is_alive()
    with HDF5StorageReader(store.run_file("stall")) as reader:
        x = reader.focus_group("group['x']")
        assert len(x) == 60
        np.testing.assert_array_equal(x[:, 0], np.arange(60))

"""Faults with real processes: SIGKILL and SIGTERM of the store, killed writers, a full disk.

What the store acknowledged survives; what it did not is resent; the run ends
with every frame exactly once, in order.
"""

from __future__ import annotations

import signal
import time

import h5py
import numpy as np
import pytest

from trajstore import (
    EveryNStep,
    HDF5StorageReader,
    RemoteStorageWriter,
    WriterGroupConfig,
    connect,
    view,
)
from trajstore import errors as E

from helpers import md_config, md_state, needs_tool
from servers import (
    assert_every_frame_once,
    durable_frames,
    free_port,
    start_live_writer,
    start_store,
    wait_until,
)


def test_store_sigkill_midstream_then_restart_loses_nothing(tmp_path):
    port = free_port()
    store = start_store(tmp_path / "data", port=port)
    writer = start_live_writer(store.address, "crash/run", frames=600, pause=0.004)
    wait_until(lambda: durable_frames(store.address, "crash/run") >= 150)
    store.stop(signal.SIGKILL)
    # Acknowledged frames are intact and readable while the store is down.
    path = store.run_file("crash/run")
    with HDF5StorageReader(path) as reader:
        survived = len(reader.focus_group("group['x']"))
    assert survived >= 150
    assert_every_frame_once(path, survived)
    time.sleep(0.5)  # the writer notices and starts backing off
    restarted = start_store(tmp_path / "data", port=port)
    try:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        assert_every_frame_once(path, 600)
    finally:
        assert restarted.stop() == 0
    with h5py.File(path, "r") as f:  # closed cleanly after the recovery
        assert f.attrs["actual_steps"] == 600


def test_killed_writer_releases_the_run_after_its_lease(tmp_path):
    store = start_store(tmp_path / "data", "--lease-seconds", "5")
    try:
        writer = start_live_writer(store.address, "lease/run", frames=100_000, pause=0.002)
        wait_until(lambda: durable_frames(store.address, "lease/run") >= 50)
        writer.kill()
        writer.wait(60)
        config = {"x": WriterGroupConfig(view(lambda s: {"a": s["a"], "b": s["b"]}), EveryNStep(1))}
        first = {"a": np.zeros((64, 3), np.float32), "b": np.int64(0)}

        def resume():
            return RemoteStorageWriter(
                store.address, "lease/run", config, first, mode="append", compile_views=False
            ).__enter__()

        # The refusal says the hold lapses, and when.
        with pytest.raises(E.RunLockedError, match=r"hold lapses 5 s after its last message: try"):
            resume()
        resumed = []

        def resumes():  # once the 5 s lease of the killed writer has lapsed
            try:
                resumed.append(resume())
            except E.RunLockedError:
                return False
            return True

        wait_until(resumes, timeout=120, interval=0.2)
        (log,) = resumed
        durable = log.resumed_frames["group['x']"]
        assert durable >= 50
        try:
            for step in range(durable, durable + 10):
                log.log({"a": np.full((64, 3), step, np.float32), "b": np.int64(step)}, step)
        finally:
            log.__exit__(None, None, None)
        assert_every_frame_once(store.run_file("lease/run"), durable + 10)
    finally:
        assert store.stop() == 0


def test_sigterm_drains_flushes_and_closes_every_file(tmp_path):
    store = start_store(tmp_path / "data", "--shutdown-grace", "1")
    state = md_state()
    log = RemoteStorageWriter(
        store.address, "term", md_config(every=1), state, 10, reconnect_timeout=1
    ).__enter__()
    for step in range(5):
        log.log(state, step)
    log.flush()
    assert store.stop(signal.SIGTERM) == 0
    with h5py.File(store.run_file("term"), "r") as f:  # plain open: nothing left in SWMR
        assert f["traj"].attrs["frames"] == 5
        assert f.attrs["actual_steps"] == 5
    with pytest.raises(E.UnavailableError):  # the store is gone for good: a clear error
        log.log(state, 5)
        log.flush()
    log._sender.cancel()


def test_a_full_disk_fails_that_writer_and_the_store_serves_the_rest(tmp_path):
    needs_tool("prlimit", "(util-linux) to give the store a small disk")
    # The store may write no file beyond 4 MiB: writes past it fail with EFBIG,
    # as on a full disk.
    store = start_store(tmp_path / "data", launcher=["prlimit", f"--fsize={4 << 20}"])
    try:
        big = np.zeros((256, 1024), np.float32)  # 1 MiB frames
        config = {"x": WriterGroupConfig(view(lambda s: s), EveryNStep(1), compression=None)}
        with pytest.raises(E.StorageError):
            with RemoteStorageWriter(
                store.address, "full", config, big, 20, compile_views=False
            ) as log:
                for step in range(20):
                    log.log(big + step, step)
                    log.flush()
        with HDF5StorageReader(store.run_file("full")) as reader:
            kept = reader.focus_group("group['x']")
            assert 0 < len(kept) < 20
            np.testing.assert_array_equal(kept[len(kept) - 1][0, :3], len(kept) - 1)
        state = md_state()
        with RemoteStorageWriter(store.address, "small", md_config(), state, 4) as log:
            for step in range(4):
                log.log(state, step)
        with connect(store.address) as client:
            assert {r.name for r in client.list_runs()} == {"full", "small"}
    finally:
        assert store.stop() == 0

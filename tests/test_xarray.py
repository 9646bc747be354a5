"""The xarray backend on local files and on a real store; dask on a real LocalCluster."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from trajstore import (
    Compression,
    EveryNStep,
    HDF5StorageReader,
    HDF5StorageWriter,
    RemoteStorageWriter,
    WriterGroupConfig,
    connect,
    view,
)
from trajstore.client.reader import RemoteLeaves
from trajstore.errors import (
    GroupNotFoundError,
    InvalidArgumentError,
    InvalidRunNameError,
    NotOpenError,
    RunChangedError,
    RunDamagedError,
    RunNotFoundError,
    SchemaError,
    UnauthenticatedError,
)
from trajstore.store.reader import RunFileReader
from trajstore.xarray_backend import TrajstoreBackendEntrypoint, open_runs

from helpers import advance, md_config, md_state
from servers import start_store

FORMAT1 = Path(__file__).parent / "data" / "format1.h5"
STEPS = 40


def log_run(writer_factory, steps=STEPS, seed=0):
    state = md_state(seed=seed)
    with writer_factory(state) as log:
        for step in range(steps):
            state = {**state, **advance(state, step)}
            log.log(state, step)


def write_local(path, steps=STEPS, seed=0):
    config = md_config(every=2)
    log_run(
        lambda s: HDF5StorageWriter(path, config, s, steps, metadata={"T": 300, "tag": "x"}),
        steps,
        seed,
    )


def write_remote(address, run, steps=STEPS, seed=0):
    config = md_config(every=2)
    log_run(
        lambda s: RemoteStorageWriter(address, run, config, s, steps, metadata={"T": 300}),
        steps,
        seed,
    )


def expected(path, group="traj"):
    with HDF5StorageReader(path) as reader:
        return reader.focus_group(group)[:]


def test_open_dataset_reads_a_local_run(tmp_path):
    write_local(tmp_path / "r.h5")
    want = expected(tmp_path / "r.h5")
    with xr.open_dataset(tmp_path / "r.h5", engine="trajstore", group="traj") as ds:
        assert dict(ds.sizes) == {
            "frame": 20,
            "pos_dim0": 16,
            "pos_dim1": 3,
            "vel_dim0": 16,
            "vel_dim1": 3,
        }
        assert ds.pos.dims == ("frame", "pos_dim0", "pos_dim1")
        np.testing.assert_array_equal(ds.step.values, np.arange(0, STEPS, 2))
        np.testing.assert_array_equal(ds.pos.values, want["pos"])
        np.testing.assert_array_equal(ds.vel.values, want["vel"])
        assert ds.attrs["T"] == 300 and ds.attrs["tag"] == "x"
        assert ds.attrs["group"] == "group['traj']"
    with xr.open_dataset(tmp_path / "r.h5", engine="trajstore", group="box") as box:
        assert box.box.dims == ("box_dim0", "box_dim1")
        np.testing.assert_array_equal(box.box.values, np.eye(3))


def test_the_backend_matches_h5netcdf_on_a_closed_run(tmp_path):
    write_local(tmp_path / "r.h5")
    # One after the other: in one process, HDF5 refuses to open a file with
    # its file locking while trajstore has it open without (README: On disk).
    with xr.open_dataset(tmp_path / "r.h5", engine="trajstore", group="traj") as ds:
        ours = ds.load().drop_attrs()
    with xr.open_dataset(tmp_path / "r.h5", engine="h5netcdf", group="traj") as ds:
        plain = ds.load().drop_attrs()
    xr.testing.assert_equal(ours, plain)


def test_indexing_reads_only_the_frames_asked_for(tmp_path, monkeypatch):
    write_local(tmp_path / "r.h5")
    asked = []
    original = RunFileReader.read

    def recording(self, group, leaves, index, **kwargs):
        asked.append(index)
        return original(self, group, leaves, index, **kwargs)

    monkeypatch.setattr(RunFileReader, "read", recording)
    with xr.open_dataset(tmp_path / "r.h5", engine="trajstore", group="traj") as ds:
        every5 = ds.pos.isel(frame=slice(None, None, 5))
        assert asked == []  # opening read nothing
        values = every5.values
    assert len(asked) == 1 and asked[0][0] == slice(0, 20, 5)  # one read, of those frames
    np.testing.assert_array_equal(values, expected(tmp_path / "r.h5")["pos"][::5])


def test_format_1_files_open_too():
    with xr.open_dataset(FORMAT1, engine="trajstore", group="traj") as ds:
        assert ds.sizes["frame"] == 50
        np.testing.assert_array_equal(ds.step.values, np.arange(50))
        np.testing.assert_array_equal(ds.pos.values, expected(FORMAT1)["pos"])


def test_groups_are_named_by_path_or_by_kups_name_and_must_exist(tmp_path):
    write_local(tmp_path / "r.h5")
    with xr.open_dataset(tmp_path / "r.h5", engine="trajstore", group="group['energy']") as ds:
        assert list(ds.data_vars) == ["energy"]
    with pytest.raises(GroupNotFoundError, match="choose one with group="):
        xr.open_dataset(tmp_path / "r.h5", engine="trajstore")
    with pytest.raises(GroupNotFoundError, match="nope"):
        xr.open_dataset(tmp_path / "r.h5", engine="trajstore", group="nope")
    with pytest.raises(RunNotFoundError):
        xr.open_dataset(tmp_path / "missing.h5", engine="trajstore", group="traj")


def test_a_dataset_keeps_the_length_it_was_opened_with(tmp_path):
    state = md_state()
    config = md_config(every=1)
    with HDF5StorageWriter(tmp_path / "r.h5", config, state) as log:
        for step in range(5):
            log.log(state, step)
        log.flush()
        with HDF5StorageReader(tmp_path / "r.h5") as reader:
            ds = reader.focus_group("traj").to_xarray()
            assert ds.sizes["frame"] == 5
            for step in range(5, 9):
                log.log(state, step)
            log.flush()
            assert ds.pos.shape[0] == 5 and ds.pos[-1].values.shape == (16, 3)
            assert reader.focus_group("traj").to_xarray().sizes["frame"] == 9


def test_to_xarray_and_open_dataset_on_a_real_store(store, tmp_path):
    write_remote(store.address, "proj/r")
    with connect(store.address) as client:
        client.pull("proj/r", tmp_path / "local.h5", progress=False)
        with client.open_run("proj/r") as reader:
            from_reader = reader.focus_group("traj").to_xarray()
            np.testing.assert_array_equal(
                from_reader.pos.values, expected(tmp_path / "local.h5")["pos"]
            )
    url = f"trajstore://{store.address}/proj/r"
    with xr.open_dataset(url, group="traj") as ds:  # the engine is found from the URL
        local = xr.open_dataset(tmp_path / "local.h5", engine="trajstore", group="traj")
        xr.testing.assert_equal(ds.drop_attrs(), local.drop_attrs())
        assert ds.attrs["run"] == url and ds.attrs["T"] == 300
    with pytest.raises(RunNotFoundError):
        xr.open_dataset(
            f"trajstore://{store.address}/proj/missing", engine="trajstore", group="traj"
        )


def test_remote_indexing_moves_only_the_frames_asked_for(store, monkeypatch):
    write_remote(store.address, "r")
    asked = []
    original = RemoteLeaves.read

    def recording(self, leaves, index):
        asked.append(index)
        return original(self, leaves, index)

    monkeypatch.setattr(RemoteLeaves, "read", recording)
    with xr.open_dataset(f"trajstore://{store.address}/r", engine="trajstore", group="traj") as ds:
        values = ds.vel.isel(frame=slice(1, None, 10)).values
    assert values.shape == (2, 16, 3)
    assert len(asked) == 1 and asked[0][0] == slice(1, 20, 10)


def test_dask_tasks_read_whole_stored_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr("trajstore.xarray_backend.TASK_BYTES", 4096)  # a few chunks per task
    config = md_config(every=1, compression=Compression("zstd", 1, target_chunk_bytes=1024))
    log_run(lambda s: HDF5StorageWriter(tmp_path / "r.h5", config, s, 100), 100)
    with h5py.File(tmp_path / "r.h5", "r", locking=False) as f:
        stored = f["traj/pos"].chunks
    assert stored[0] > 1
    with xr.open_dataset(tmp_path / "r.h5", engine="trajstore", group="traj", chunks={}) as ds:
        (frame_chunks, atoms, xyz) = ds.pos.chunks
        assert atoms == (16,) and xyz == (3,)
        assert all(c % stored[0] == 0 for c in frame_chunks[:-1])  # never a stored chunk split
        assert 1 < len(frame_chunks) < 100 // stored[0]  # several stored chunks per task
        want = expected(tmp_path / "r.h5")["pos"]
        np.testing.assert_allclose(ds.pos.mean("frame").values, want.mean(0), rtol=1e-6)


def test_a_pickled_remote_reader_carries_no_token_and_reconnects(tmp_path, monkeypatch):
    guarded = start_store(
        tmp_path / "data", env={"TRAJSTORE_TOKENS": "write:w-tok-1, read:r-tok-2"}
    )
    try:
        config = md_config(every=1)
        log_run(
            lambda s: RemoteStorageWriter(guarded.address, "r", config, s, 4, token="w-tok-1"), 4
        )
        with connect(guarded.address, token="r-tok-2") as client, client.open_run("r") as reader:
            group = reader.focus_group("traj")
            want = group[:]["pos"]
            data = pickle.dumps(group)
        assert b"r-tok-2" not in data
        monkeypatch.setenv("TRAJSTORE_TOKEN", "r-tok-2")  # the other process's own token
        copy = pickle.loads(data)
        np.testing.assert_array_equal(copy[:]["pos"], want)
        monkeypatch.delenv("TRAJSTORE_TOKEN")
        with pytest.raises(UnauthenticatedError):
            pickle.loads(data)[0]
    finally:
        assert guarded.stop() == 0


def test_graphs_carry_no_token_unless_asked(tmp_path):
    guarded = start_store(
        tmp_path / "data", env={"TRAJSTORE_TOKENS": "write:w-tok-123, read:r-tok-456"}
    )
    try:
        config = md_config(every=1)
        log_run(
            lambda s: RemoteStorageWriter(guarded.address, "r", config, s, 4, token="w-tok-123"), 4
        )
        url = f"trajstore://{guarded.address}/r"
        with xr.open_dataset(
            url, engine="trajstore", group="traj", token="r-tok-456", chunks={}
        ) as ds:
            assert b"r-tok-456" not in pickle.dumps(ds.pos.data.dask)
            assert ds.pos.values.shape == (4, 16, 3)
        opened = xr.open_dataset(
            url, engine="trajstore", group="traj", token="r-tok-456", chunks={}, embed_token=True
        )
        with opened as ds:
            assert b"r-tok-456" in pickle.dumps(ds.pos.data.dask)
    finally:
        assert guarded.stop() == 0


def test_open_runs_stacks_runs_of_equal_shape(tmp_path):
    (tmp_path / "runs" / "proj").mkdir(parents=True)
    for i in range(3):
        write_local(tmp_path / "runs" / "proj" / f"r{i}.h5", seed=i)
    write_local(tmp_path / "runs" / "other.h5")
    with open_runs(tmp_path / "runs", "proj/", "traj") as ds:
        assert list(ds.run.values) == ["proj/r0", "proj/r1", "proj/r2"]
        assert ds.pos.dims == ("run", "frame", "pos_dim0", "pos_dim1")
        for i in range(3):
            want = expected(tmp_path / "runs" / "proj" / f"r{i}.h5")["pos"]
            np.testing.assert_array_equal(ds.pos.sel(run=f"proj/r{i}").values, want)
    write_local(tmp_path / "runs" / "proj" / "short.h5", steps=10)
    with pytest.raises(SchemaError, match="runs differ in shape"):
        open_runs(tmp_path / "runs", "proj/", "traj")
    with pytest.raises(RunNotFoundError, match="no run"):
        open_runs(tmp_path / "runs", "nothing/", "traj")
    with pytest.raises(RunNotFoundError, match="no directory"):
        open_runs(tmp_path / "absent", "", "traj")


def test_the_entry_point_is_registered():
    engines = xr.backends.list_engines()
    assert isinstance(engines["trajstore"], TrajstoreBackendEntrypoint)


@pytest.mark.filterwarnings("ignore:The specified chunks separate the stored chunks")
def test_dask_on_a_local_cluster_computes_statistics_of_remote_runs(store, tmp_path):
    distributed = pytest.importorskip("distributed")
    runs = [f"study/run-{i}" for i in range(3)]
    for i, run in enumerate(runs):
        write_remote(store.address, run, seed=i)
    with connect(store.address) as client:
        local = {run: tmp_path / f"{i}.h5" for i, run in enumerate(runs)}
        for run, path in local.items():
            client.pull(run, path, progress=False)
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster) as dask_client,
        ):
            with client.open_runs("study/", "traj", chunks={"frame": 4}) as ds:
                mean_speed = np.sqrt((ds.vel**2).sum("vel_dim1")).mean(("frame", "vel_dim0"))
                pos_max = ds.pos.max(("frame", "pos_dim0", "pos_dim1"))
                got_speed, got_max = dask_client.compute([mean_speed.data, pos_max.data], sync=True)
            # A remote group reader itself travels too (it reconnects in the worker).
            with client.open_run(runs[0]) as reader:
                group = reader.focus_group("traj")
                sums = dask_client.submit(lambda g: float(g[:]["pos"].sum()), group).result()
            workers = dask_client.run(lambda: __import__("os").getpid())
    assert len(set(workers.values())) == 2  # the work ran in two other processes
    for i, run in enumerate(runs):
        want = expected(local[run])
        speed = np.sqrt((want["vel"] ** 2).sum(-1)).mean()
        np.testing.assert_allclose(got_speed[i], speed, rtol=1e-6)
        assert got_max[i] == want["pos"].max()
    assert sums == pytest.approx(float(expected(local[runs[0]])["pos"].sum()), rel=1e-6)


def test_a_copied_format_1_run_in_a_directory_stacks_with_new_ones(tmp_path):
    (tmp_path / "runs").mkdir()
    shutil.copyfile(FORMAT1, tmp_path / "runs" / "old.h5")
    with open_runs(tmp_path / "runs", "", "energy") as ds:
        assert ds.energy.dims == ("run", "frame")


def test_a_damaged_file_is_a_typed_error(tmp_path):
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(RunDamagedError):
        xr.open_dataset(tmp_path / "bad.h5", engine="trajstore", group="traj")


def test_hostile_urls_and_missing_tokens_are_refused(store, tmp_path):
    with pytest.raises(InvalidRunNameError):
        xr.open_dataset(f"trajstore://{store.address}/../etc/x", engine="trajstore", group="traj")
    for url in ("trajstore:///just-a-run", "trajstore://h:1/run?x=1", "trajstore://u@h:1/r"):
        with pytest.raises(InvalidArgumentError, match="trajstore://host:port/run"):
            xr.open_dataset(url, engine="trajstore", group="traj")
    guarded = start_store(tmp_path / "g", env={"TRAJSTORE_TOKENS": "read:r-tok-789"})
    try:
        with pytest.raises(UnauthenticatedError):
            xr.open_dataset(f"trajstore://{guarded.address}/r", engine="trajstore", group="traj")
    finally:
        assert guarded.stop() == 0


def test_a_run_overwritten_after_opening_is_never_mixed_in(store):
    write_remote(store.address, "over", seed=0)
    url = f"trajstore://{store.address}/over"
    with xr.open_dataset(url, engine="trajstore", group="traj") as ds:
        first = ds.pos[0].values
        config = md_config(every=2)
        log_run(
            lambda s: RemoteStorageWriter(store.address, "over", config, s, mode="overwrite"),
            seed=1,
        )
        with pytest.raises(RunChangedError):
            ds.pos[1].values  # noqa: B018 (the read is the test)
    with xr.open_dataset(url, engine="trajstore", group="traj") as again:
        assert not np.array_equal(again.pos[0].values, first)  # the new version, whole


def test_a_closed_dataset_is_not_read_again(tmp_path):
    write_local(tmp_path / "r.h5")
    ds = xr.open_dataset(tmp_path / "r.h5", engine="trajstore", group="traj")
    ds.close()
    with pytest.raises(NotOpenError, match="was closed"):
        ds.pos[0].values  # noqa: B018 (the read is the test)


def test_variable_and_dimension_names_are_unique_in_the_dataset(tmp_path):
    """Nested leaves flatten with '.'; what then reads the same is numbered, never dropped."""
    state = {
        "a": {"b": np.float32(1), "c": np.zeros(3, np.float32)},
        "a.b": np.float32(2),
        "c": np.zeros(5, np.float32),
    }
    config = {"g": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    with HDF5StorageWriter(tmp_path / "r.h5", config, state, compile_views=False) as log:
        log.log(state, 0)
    with xr.open_dataset(tmp_path / "r.h5", engine="trajstore", group="g") as ds:
        assert set(ds.data_vars) == {"a.b", "a.c", "a.b_2", "c"}
        values = {name: ds[name].values[0].tolist() for name in ds.data_vars}
        assert sorted(map(str, values.values())) == sorted(
            ["1.0", "2.0", str([0.0] * 3), str([0.0] * 5)]
        )
        assert ds["a.c"].dims == ("frame", "a.c_dim0") and ds["c"].dims == ("frame", "c_dim0")


def test_a_local_run_overwritten_under_a_dask_graph_is_never_mixed_in(tmp_path):
    config = md_config(every=1)
    path = tmp_path / "r.h5"
    log_run(lambda s: HDF5StorageWriter(path, config, s), 8, seed=0)
    with xr.open_dataset(path, engine="trajstore", group="traj", chunks={}) as ds:
        log_run(lambda s: HDF5StorageWriter(path, config, s, mode="overwrite"), 8, seed=1)
        # threads read through this process's handle: the version opened, whole
        ds.pos.compute(scheduler="threads")
        # other processes open the file anew: the new version is refused
        with pytest.raises(RunChangedError):
            ds.pos.compute(scheduler="processes")

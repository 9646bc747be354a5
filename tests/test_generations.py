"""Versions of a run: reads that span calls never join frames of two versions.

A run's generation is new when it is overwritten and changes when a writer
rewrites stored frames (a restart from a checkpoint: ``mode="append"``, then
logging from an earlier step). ``follow()``, ``read_chunked`` and ``pull``
pin the generation they start on and end with ``RunChangedError`` when it
changes (``follow(on_rewind=...)`` resumes from the rewind point instead).
Frame ``i`` of version ``v`` holds ``1000 * v + i``, so a mix shows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

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
from trajstore.errors import FailedPreconditionError, RunChangedError

from servers import start_store, wait_until

#: 1 MiB a frame: a follower's batch is 16 frames, far more than gRPC buffers,
#: so a slow follower is still following while the run changes.
BIG = (256, 1024)
FRAMES = 40
RUN = "gen/run"
GROUP = "group['x']"


def config():
    return {"x": WriterGroupConfig(view(lambda s: {"a": s["a"], "b": s["b"]}), EveryNStep(1))}


def state(value, shape=BIG):
    """Frame ``value``: ``b`` is the value, ``a`` noise seeded by it (it does not compress)."""
    noise = np.random.default_rng(value).random(shape, np.float32)
    return {"a": noise, "b": np.int64(value)}


def write(address, version, steps, *, mode="create", shape=BIG, run=RUN):
    """Log ``steps`` of ``version`` (frame i holds 1000 * version + i) and close."""
    with writing(address, mode, shape, run) as log:
        for step in steps:
            log.log(state(1000 * version + step, shape), step)


def writing(address, mode="create", shape=BIG, run=RUN):
    return RemoteStorageWriter(
        address, run, config(), state(0, shape), FRAMES, mode=mode, compile_views=False
    )


def values(frames):
    return [int(f["b"]) for f in frames]


def stored(store, run=RUN):
    with HDF5StorageReader(store.run_file(run)) as reader:
        return [int(b) for b in reader.focus_group(GROUP).read(select=lambda s: s["b"])]


def test_a_slow_follower_across_an_overwrite_gets_run_changed_not_the_new_runs_frames(store):
    write(store.address, 1, range(FRAMES))
    with connect(store.address) as client, client.open_run(RUN) as reader:
        follower = reader.focus_group(GROUP).follow()
        seen = [next(follower) for _ in range(3)]  # then slow: the store is still sending
        write(store.address, 2, range(FRAMES), mode="overwrite")
        with pytest.raises(RunChangedError) as caught:
            seen.extend(follower)
    assert seen and values(seen) == [1000 + i for i in range(len(seen))]  # the old run's only
    error = caught.value
    assert isinstance(error, FailedPreconditionError)
    assert error.old_generation and error.new_generation
    assert error.old_generation != error.new_generation
    assert error.rewind_frame is None  # replaced: every frame may differ
    assert stored(store) == [2000 + i for i in range(FRAMES)]


def test_a_slow_follower_across_a_restart_from_a_checkpoint_gets_run_changed(store):
    write(store.address, 1, range(FRAMES))
    with connect(store.address) as client, client.open_run(RUN) as reader:
        generation = reader.describe().generation
        follower = reader.focus_group(GROUP).follow()
        seen = [next(follower) for _ in range(3)]
        write(store.address, 2, range(5, FRAMES), mode="append")  # restart from step 5
        with pytest.raises(RunChangedError) as caught:
            seen.extend(follower)
        assert reader.describe().generation == generation + 1
    assert values(seen) == [1000 + i for i in range(len(seen))]  # as the run was when sent
    assert caught.value.old_generation == generation
    assert caught.value.new_generation == generation + 1
    assert stored(store) == [1000 + i for i in range(5)] + [2000 + i for i in range(5, FRAMES)]


def test_follow_resumes_from_the_rewind_point_and_ends_with_the_final_run(store):
    write(store.address, 1, range(FRAMES))
    rewinds = []

    def on_rewind(error):
        rewinds.append(error.rewind_frame)
        del seen[error.rewind_frame or 0 :]  # the frames the new version replaced

    with connect(store.address) as client, client.open_run(RUN) as reader:
        follower = reader.focus_group(GROUP).follow(on_rewind=on_rewind)
        seen = [next(follower) for _ in range(3)]
        with writing(store.address, "append") as log:  # restart from step 5 ...
            for step in range(5, FRAMES):
                log.log(state(2000 + step), step)
            log.flush()
            # ... and the follower goes on while the writer still holds the run
            while len(seen) < FRAMES or not rewinds:
                seen.append(next(follower))
        seen.extend(follower)  # ends when the writer closes
    assert rewinds == [5]  # the store knows where its writer rewound
    final = stored(store)
    assert final == [1000 + i for i in range(5)] + [2000 + i for i in range(5, FRAMES)]
    assert values(seen) == final
    for frame, value in zip(seen, final, strict=True):
        np.testing.assert_array_equal(frame["a"], state(value)["a"])


def test_follow_resume_after_the_writer_closed_starts_over_when_the_store_cannot_say_where(store):
    write(store.address, 1, range(FRAMES))
    seen = []
    rewinds = []

    def on_rewind(error):
        rewinds.append(error.rewind_frame)
        del seen[error.rewind_frame or 0 :]

    with connect(store.address) as client, client.open_run(RUN) as reader:
        follower = reader.focus_group(GROUP).follow(on_rewind=on_rewind)
        seen.extend(next(follower) for _ in range(3))
        write(store.address, 2, range(5, FRAMES), mode="append")  # closed before it resumes
        seen.extend(follower)
    assert rewinds and all(r in (None, 5) for r in rewinds)
    expected = [1000 + i for i in range(5)] + [2000 + i for i in range(5, FRAMES)]
    assert values(seen) == stored(store) == expected


def test_read_chunked_across_an_overwrite_raises_run_changed(store):
    shape = (4,)
    write(store.address, 1, range(FRAMES), shape=shape)
    with connect(store.address) as client, client.open_run(RUN) as reader:
        chunks = reader.focus_group(GROUP).read_chunked(4)
        first = next(chunks)
        write(store.address, 2, range(FRAMES), mode="overwrite", shape=shape)
        with pytest.raises(RunChangedError):
            rest = list(chunks)
            pytest.fail(f"read on into the new run: {[list(c['b']) for c in rest]}")
        assert list(first["b"]) == [1000, 1001, 1002, 1003]
        # a new read_chunked reads the new run
        again = np.concatenate([c["b"] for c in reader.focus_group(GROUP).read_chunked(16)])
        assert list(again) == [2000 + i for i in range(FRAMES)]


PULL = """
import sys
from trajstore import connect
from trajstore.errors import RunChangedError
with connect(sys.argv[1]) as client:
    try:
        client.pull(sys.argv[2], sys.argv[3], progress=False, chunk_bytes=1 << 20)
    except RunChangedError as e:
        print("changed", e.old_generation, e.new_generation, flush=True)
        sys.exit(3)
print("pulled", flush=True)
"""


def size(path):
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_a_pull_during_an_overwrite_never_writes_a_file_mixing_both_runs(store, tmp_path):
    write(store.address, 1, range(FRAMES))
    target = tmp_path / "copy.h5"
    partial = tmp_path / "copy.h5.part"
    puller = subprocess.Popen(
        [sys.executable, "-c", PULL, store.address, RUN, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Stopped once a few of its frames (one a request) are in the copy.
        wait_until(lambda: size(partial) > 4 << 20 or puller.poll() is not None, interval=0.005)
        assert puller.poll() is None, puller.communicate()
        os.kill(puller.pid, signal.SIGSTOP)
        write(store.address, 2, range(FRAMES), mode="overwrite")
    finally:
        if puller.poll() is None:
            os.kill(puller.pid, signal.SIGCONT)
    out, err = puller.communicate(timeout=120)
    if puller.returncode == 3:
        assert out.startswith("changed"), err
        assert not target.exists() and not partial.exists()
    else:
        assert puller.returncode == 0, err
        with HDF5StorageReader(target) as copy:
            got = [int(b) for b in copy.focus_group(GROUP).read(select=lambda s: s["b"])]
        assert got in ([1000 + i for i in range(FRAMES)], [2000 + i for i in range(FRAMES)])


def test_the_generation_is_in_the_file_and_survives_a_store_restart(tmp_path):
    shape = (4,)
    store = start_store(tmp_path / "data")
    try:
        write(store.address, 1, range(10), shape=shape)
        with connect(store.address) as client, client.open_run(RUN) as reader:
            created = reader.describe().generation
            assert [r.generation for r in client.list_runs()] == [created]
        write(store.address, 1, range(10, 20), mode="append", shape=shape)  # no rewrite
        write(store.address, 2, range(15, 20), mode="append", shape=shape)  # rewinds to 15
    finally:
        assert store.stop() == 0
    with h5py.File(store.run_file(RUN), "r") as file:
        assert int(file.attrs["generation"]) == created + 1
    with HDF5StorageReader(store.run_file(RUN)) as local:
        assert local.generation == created + 1
    store = start_store(tmp_path / "data")
    try:
        with connect(store.address) as client, client.open_run(RUN) as reader:
            assert reader.describe().generation == created + 1
            chunks = [c["b"] for c in reader.focus_group(GROUP).read_chunked(7)]
        assert list(np.concatenate(chunks)) == [1000 + i for i in range(15)] + [
            2000 + i for i in range(15, 20)
        ]
        write(store.address, 3, range(5), mode="overwrite", shape=shape)
        with connect(store.address) as client, client.open_run(RUN) as reader:
            replaced = reader.describe().generation
        assert replaced not in (0, created, created + 1)
    finally:
        assert store.stop() == 0

"""Reading runs while they are written: follow(), and many readers beside many writers."""

from __future__ import annotations

import threading
import time

import numpy as np

from trajstore import HDF5StorageReader, RemoteStorageReader, connect

from servers import start_live_writer


def wait_for_run(store, run, timeout=120):
    deadline = time.monotonic() + timeout
    with connect(store.address) as client:
        while time.monotonic() < deadline:
            if any(info.name == run for info in client.list_runs()):
                return
            time.sleep(0.02)
    raise AssertionError(f"run {run} never appeared")


def test_follow_sees_every_frame_once_in_order_and_ends_at_close(store):
    writer = start_live_writer(store.address, "live/f", frames=300)
    wait_for_run(store, "live/f")
    seen = []
    with RemoteStorageReader(store.address, "live/f") as reader:
        assert reader.describe().open or writer.poll() is not None
        for frame in reader.focus_group("group['x']").follow():
            seen.append(frame)
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert [int(f["b"]) for f in seen] == list(range(300))
    for i, frame in enumerate(seen):
        np.testing.assert_array_equal(frame["a"], np.full((64, 3), i, np.float32))
    with RemoteStorageReader(store.address, "live/f") as reader:
        assert not reader.describe().open
        # following a closed run from the middle: the rest at once, then the end
        tail = list(reader.focus_group("group['x']").follow(start=295, select=lambda s: s["b"]))
        assert [int(b) for b in tail] == [295, 296, 297, 298, 299]
        twice = reader.focus_group("group['x']").follow(
            start=298, select=lambda s: (s["b"], s["a"], s["b"])
        )
        assert [(int(b), a[0, 0], int(b2)) for b, a, b2 in twice] == [
            (298, 298, 298),
            (299, 299, 299),
        ]


def check_frames(group, n):
    """Frames [0, n) must hold their own index: never zero-filled or torn."""
    if n == 0:
        return
    values = group.read(slice(0, n))
    np.testing.assert_array_equal(values["b"], np.arange(n))
    np.testing.assert_array_equal(values["a"][:, 5, 1], np.arange(n, dtype=np.float32))
    np.testing.assert_array_equal(group[n - 1]["a"], np.full((64, 3), n - 1, np.float32))


def test_eight_readers_beside_four_writers_read_consistently(store):
    runs = [f"live/w{i}" for i in range(4)]
    writers = [start_live_writer(store.address, run, frames=250, pause=0.005) for run in runs]
    for run in runs:
        wait_for_run(store, run)
    failures: list[BaseException] = []
    reads = [0] * 8
    live_reads = [0] * 8  # reads made while the run was still being written

    def reader(k):
        run = runs[k % 4]
        try:
            with RemoteStorageReader(store.address, run) as r:
                group = r.focus_group("group['x']")
                last = 0
                while True:
                    info = r.describe()
                    n = len(group)
                    assert n >= last, "a run shrank"
                    check_frames(group, n)
                    reads[k] += 1
                    live_reads[k] += info.open
                    last = n
                    if not info.open and n == info.frames["group['x']"]:
                        break
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for w in writers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    for t in threads:
        t.join(300)
    assert not failures, failures[0]
    assert min(reads) >= 1
    assert sum(live_reads) > 0, "no read overlapped a writer"
    for run in runs:
        with HDF5StorageReader(store.run_file(run)) as local:
            group = local.focus_group("group['x']")
            assert len(group) == 250
            check_frames(group, 250)

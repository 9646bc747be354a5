"""The background writer's contract: bounded memory, nothing dropped, errors surface."""

from __future__ import annotations

import threading
import time

import h5py
import numpy as np
import pytest

from trajstore import BackgroundWriter, HDF5StorageReader, HDF5StorageWriter
from trajstore.errors import (
    GroupNotFoundError,
    NotOpenError,
    StorageError,
    TrajstoreError,
    WriterFailedError,
)
from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.store.layout import batch_frames
from trajstore.store.reader import RunFileReader
from trajstore.store.writer import RunFileWriter

from helpers import md_config, md_state

FRAME = 1024  # bytes: 256 float32
SPEC = RunSpec(
    groups=(GroupSpec("group['x']", True, (LeafSpec("", "float32", (FRAME // 4,)),)),),
)


class GatedFile(RunFileWriter):
    """A real run file whose block writes wait until the test opens the gate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write_block(self, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(60), "test never opened the gate"
        super().write_block(*args, **kwargs)


class FailingFile(RunFileWriter):
    """A real run file whose second block write fails like a full disk."""

    calls = 0

    def write_block(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise OSError(28, "No space left on device")
        super().write_block(*args, **kwargs)


def frame(i: int) -> list[np.ndarray]:
    return [np.full(FRAME // 4, i, np.float32)]


def test_submit_blocks_when_the_bound_is_reached_and_drops_nothing(tmp_path):
    file = GatedFile(tmp_path / "r.h5", SPEC)
    writer = BackgroundWriter(file, max_pending_bytes=8 * FRAME)
    submitted = []
    high_water = []

    def produce():
        for i in range(50):
            writer.submit_frame(0, i, frame(i))
            submitted.append(i)
            high_water.append(writer.pending_bytes)

    producer = threading.Thread(target=produce)
    producer.start()
    assert file.entered.wait(60)
    producer.join(0.5)
    assert producer.is_alive(), "submit did not block with the writer stuck"
    assert len(submitted) <= 9
    file.gate.set()
    producer.join(60)
    assert not producer.is_alive()
    assert max(high_water) <= 8 * FRAME
    writer.close()
    reader = RunFileReader(tmp_path / "r.h5")
    (stored,) = reader.read(0, [0], ...)
    reader.close()
    np.testing.assert_array_equal(stored[:, 0], np.arange(50))


def test_a_frame_larger_than_the_bound_still_goes_through(tmp_path):
    writer = BackgroundWriter(RunFileWriter(tmp_path / "r.h5", SPEC), max_pending_bytes=10)
    writer.submit_frame(0, 0, frame(7))
    writer.submit_frame(0, 1, frame(8))
    writer.close()
    reader = RunFileReader(tmp_path / "r.h5")
    assert reader.frames(0) == 2
    reader.close()


def test_flush_makes_frames_durable_and_visible(tmp_path):
    writer = BackgroundWriter(RunFileWriter(tmp_path / "r.h5", SPEC))
    for i in range(5):
        writer.submit_frame(0, i, frame(i))
    assert writer.flush()
    assert writer.durable_frames == [5]
    reader = RunFileReader(tmp_path / "r.h5")  # a second handle, as another process would
    assert reader.frames(0) == 5
    np.testing.assert_array_equal(reader.read(0, [0], 4)[0], frame(4)[0])
    reader.close()
    writer.close()


def test_flush_interval_flushes_without_being_asked(tmp_path):
    flushed = threading.Event()
    writer = BackgroundWriter(
        RunFileWriter(tmp_path / "r.h5", SPEC),
        flush_interval=0.05,
        on_flush=lambda frames, _tag: flushed.set() if frames == [3] else None,
    )
    for i in range(3):
        writer.submit_frame(0, i, frame(i))
    assert flushed.wait(60)
    writer.close()


def test_flush_bytes_flushes_a_fast_writer_without_waiting_for_the_interval(tmp_path):
    flushes = []
    writer = BackgroundWriter(
        RunFileWriter(tmp_path / "r.h5", SPEC),
        flush_interval=3600,  # never, in this test
        flush_bytes=4 * FRAME,
        on_flush=lambda frames, tag: flushes.append((frames, tag)),
    )
    for i in range(10):
        writer.submit_block(0, i, 1, [frame(i)[0][np.newaxis]], tag=i + 1)
    deadline = threading.Event()
    for _ in range(600):  # until both 4-frame thresholds were crossed (no timing asserted)
        if len(flushes) >= 2:
            break
        deadline.wait(0.1)
    assert len(flushes) >= 2
    assert all(frames[0] >= 4 for frames, _ in flushes)
    assert [tag for _, tag in flushes] == sorted(tag for _, tag in flushes)
    writer.close()


def test_background_error_surfaces_at_the_next_call_and_sticks(tmp_path):
    writer = BackgroundWriter(FailingFile(tmp_path / "r.h5", SPEC))
    writer.submit_frame(0, 0, frame(0))
    writer.flush()  # first block: fine
    writer.submit_frame(0, 1, frame(1))
    with pytest.raises(WriterFailedError, match="No space left") as info:
        writer.flush()
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(WriterFailedError):
        writer.submit_frame(0, 2, frame(2))
    with pytest.raises(WriterFailedError):
        writer.close()
    reader = RunFileReader(tmp_path / "r.h5")
    assert reader.frames(0) == 1  # what was flushed before the failure is kept
    reader.close()


def test_local_writer_raises_background_errors_from_log_flush_and_exit(tmp_path, monkeypatch):
    monkeypatch.setattr("trajstore.store.open_run.RunFileWriter", FailingFile)
    state = md_state()
    log = HDF5StorageWriter(tmp_path / "r.h5", md_config(every=1), state, 10)
    with pytest.raises(TrajstoreError), log:
        log.log(state, 0)
        log.flush()
        log.log(state, 1)
        log.flush()  # the second block write fails: raised here
    with pytest.raises(StorageError):
        with HDF5StorageWriter(tmp_path / "s.h5", md_config(every=1), state, 10) as log2:
            log2.log(state, 0)
            log2.flush()
            log2.log(state, 1)
        # ... or, if nothing else was called, at __exit__


def test_submit_after_close_is_refused(tmp_path):
    writer = BackgroundWriter(RunFileWriter(tmp_path / "r.h5", SPEC))
    writer.close()
    with pytest.raises(NotOpenError):
        writer.submit_frame(0, 0, frame(0))


@pytest.mark.parametrize("group", [1, -1])
def test_a_group_the_file_lacks_is_refused_when_submitted(tmp_path, group):
    writer = BackgroundWriter(RunFileWriter(tmp_path / "r.h5", SPEC))
    writer.submit_frame(0, 0, frame(0))
    with pytest.raises(GroupNotFoundError):  # negative positions do not wrap around
        writer.submit_frames([(0, 1, frame(1)), (group, 1, frame(1))])
    with pytest.raises(GroupNotFoundError):
        writer.submit_block(group, 1, 1, [np.stack(frame(1))])
    writer.submit_frame(0, 1, frame(2))  # refused calls queued nothing, and the writer goes on
    writer.close()
    assert not writer.failed
    reader = RunFileReader(tmp_path / "r.h5")
    assert reader.frames(0) == 2
    assert reader.read(0, [0], slice(None))[0][:, 0].tolist() == [0.0, 2.0]
    reader.close()


def test_reader_of_local_writer_sees_frames_after_flush(tmp_path):
    state = md_state()
    with HDF5StorageWriter(tmp_path / "r.h5", md_config(every=1), state, 10) as log:
        for step in range(4):
            log.log(state, step)
        log.flush()
        with HDF5StorageReader(tmp_path / "r.h5") as reader:
            assert len(reader.focus_group("group['energy']")) == 4


def test_small_blocks_with_gaps_are_all_written(tmp_path):
    writer = BackgroundWriter(RunFileWriter(tmp_path / "r.h5", SPEC))
    writer.submit_frame(0, 0, frame(0))
    writer.submit_block(0, 1, 2, [np.stack([frame(1)[0], frame(2)[0]])])
    writer.submit_frame(0, 5, frame(5))  # a gap: frames 3 and 4 never logged
    writer.submit_block(0, 6, 1, [frame(6)[0][np.newaxis]])
    writer.close()
    reader = RunFileReader(tmp_path / "r.h5")
    (stored,) = reader.read(0, [0], ...)
    reader.close()
    np.testing.assert_array_equal(stored[:, 0], [0, 1, 2, 0, 0, 5, 6])


class SyncGatedFile(RunFileWriter):
    """A real run file whose first ``fsync`` waits until the test opens the gate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.syncing = threading.Event()

    def sync(self):
        self.syncing.set()
        assert self.gate.wait(60), "test never opened the gate"
        super().sync()


def test_a_failure_while_a_flush_is_in_flight_leaves_the_writer_idle(tmp_path):
    file = SyncGatedFile(tmp_path / "r.h5", SPEC)
    writer = BackgroundWriter(file, flush_interval=3600, flush_bytes=FRAME)
    writer.submit_block(0, 0, 1, [frame(0)[0][np.newaxis]])  # starts a flush: its fsync waits
    assert file.syncing.wait(60)
    whole = batch_frames(SPEC.groups[0])  # a block written alone, not buffered
    writer.submit_block(0, 1, whole, [np.zeros((whole, 3), np.float32)])  # the wrong shape
    for _ in range(600):
        if writer.failed:
            break
        threading.Event().wait(0.05)
    assert writer.failed
    file.gate.set()  # the flush's data is on disk now; it will never be published
    before = time.process_time()
    threading.Event().wait(1.0)  # nothing to do: the writing thread must sleep, not spin
    used = time.process_time() - before
    with pytest.raises(TrajstoreError):
        writer.close()
    assert used < 0.5, f"{used:.2f} s of CPU in 1 s with nothing to do"


def test_after_a_failed_fsync_the_file_keeps_the_counts_of_the_last_completed_flush(
    tmp_path, monkeypatch
):
    writer = BackgroundWriter(RunFileWriter(tmp_path / "r.h5", SPEC), flush_interval=3600)
    whole = batch_frames(SPEC.groups[0])  # blocks written alone, not buffered
    block = np.ones((whole, FRAME // 4), np.float32)
    writer.submit_block(0, 0, whole, [block])
    writer.flush()
    writer.submit_block(0, whole, whole, [block])

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("trajstore.store.writer.os.fsync", failing_fsync)
    with pytest.raises(StorageError, match="Input/output error"):
        writer.flush()  # the second block's data may not be on disk
    monkeypatch.undo()
    with pytest.raises(StorageError):
        writer.close()
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f["x"].attrs["frames"] == whole  # not the unsynced 2 * whole


def test_after_a_refused_block_the_frames_written_before_are_counted(tmp_path, monkeypatch):
    check_room_calls = []

    def no_room_for_the_third(path, nbytes):
        check_room_calls.append(nbytes)
        if len(check_room_calls) == 3:  # refused before anything of it is written
            raise StorageError("no space left for r.h5: refusing the block")

    monkeypatch.setattr("trajstore.store.writer.check_room", no_room_for_the_third)
    writer = BackgroundWriter(RunFileWriter(tmp_path / "r.h5", SPEC), flush_interval=3600)
    whole = batch_frames(SPEC.groups[0])
    block = np.ones((whole, FRAME // 4), np.float32)
    for start in (0, whole, 2 * whole):  # never flushed by the caller
        writer.submit_block(0, start, whole, [block])
    with pytest.raises(StorageError, match="refusing"):
        writer.close()
    assert len(check_room_calls) == 3
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f["x"].attrs["frames"] == 2 * whole  # the file holds them: counted


def rows_and_counts(file: RunFileWriter) -> list[tuple[int, int]]:
    """(rows in the dataset, count in the file) per group, as the file holds them now."""
    return [
        (group.datasets[0].shape[0], int(file._file[group.names.path].attrs["frames"]))
        for group in file.groups
    ]


def test_a_rewrite_never_leaves_a_count_above_the_rows_or_over_unsynced_frames(tmp_path):
    leaf = (LeafSpec("", "float32", (4,)),)
    spec = RunSpec(
        groups=(GroupSpec("group['a']", True, leaf), GroupSpec("group['b']", True, leaf))
    )
    file = RunFileWriter(tmp_path / "r.h5", spec)
    ones = np.ones((10, 4), np.float32)
    try:
        file.write_block(0, 0, 10, [ones])
        file.write_block(1, 0, 10, [ones])
        file.flush()
        assert rows_and_counts(file) == [(10, 10), (10, 10)]
        file.write_block(0, 10, 2, [ones[:2]])
        ticket = file.begin_flush()  # a flush in flight, for group a only
        file.write_block(1, 5, 2, [ones[:2]])  # b resends 5..7: it shrinks to 7 rows
        assert rows_and_counts(file)[1] == (7, 5)  # counted no further than the rewrite
        file.write_block(0, 8, 1, [ones[:1]])  # a rewrites 8 after the ticket: not synced
        file.sync()
        file.publish(ticket)
        file.sync()
        assert rows_and_counts(file) == [(9, 8), (7, 5)]
        file.flush()  # the next flush counts the rewritten frames
        assert rows_and_counts(file) == [(9, 9), (7, 7)]
    finally:
        file.close()
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert [int(f[g].attrs["frames"]) for g in ("a", "b")] == [9, 7]


def test_a_block_waiting_for_room_when_the_writer_closes_is_refused_not_dropped(tmp_path):
    file = GatedFile(tmp_path / "r.h5", SPEC)
    writer = BackgroundWriter(file, max_pending_bytes=2 * FRAME)
    whole = batch_frames(SPEC.groups[0])
    block = np.ones((whole, FRAME // 4), np.float32)
    writer.submit_block(0, 0, whole, [block])  # being written: the gate holds it
    assert file.entered.wait(60)
    outcome = []

    def submit_another():
        try:
            writer.submit_block(0, whole, whole, [block])  # waits for room
            outcome.append("accepted")
        except NotOpenError:
            outcome.append("refused")

    waiting = threading.Thread(target=submit_another)
    waiting.start()
    for _ in range(600):
        if writer._waiting:
            break
        threading.Event().wait(0.05)
    closing = threading.Thread(target=writer.close)
    closing.start()
    for _ in range(600):
        if writer._closed:
            break
        threading.Event().wait(0.05)
    file.gate.set()  # room again, but the writer is closed: the block must not vanish
    waiting.join(60)
    closing.join(60)
    assert outcome == ["refused"]
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f["x"].attrs["frames"] == whole

"""The spill journal: a store away past ``reconnect_timeout``, frames kept on local disk.

Real store processes killed with SIGKILL, real writer processes, the real
``trajstore push`` command. The run always ends with every frame exactly once.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import warnings

import h5py
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trajstore import RemoteStorageWriter
from trajstore import errors as E
from trajstore.client.journal import MAGIC, JournalBlock, JournalEnd, JournalReader, JournalWriter
from trajstore.client.push import push_journal
from trajstore.v1 import ingest_pb2 as pb

from servers import (
    assert_every_frame_once,
    durable_frames,
    free_port,
    live_config,
    live_state,
    start_live_writer,
    start_store,
    wait_until,
)

RUN_REQUEST = pb.OpenRunRequest(run="a/b", mode=pb.OPEN_MODE_APPEND)


def writer(address, run, journal, **options):
    """A live-writer-shaped RemoteStorageWriter that spills after 1 s away."""
    options = {"reconnect_timeout": 1, "send_interval": 0.01, **options}
    return RemoteStorageWriter(
        address, run, live_config(), live_state(0), compile_views=False, journal=journal, **options
    )


# ------------------------------------------------------------------ the file format


blocks = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.binary(max_size=300)), max_size=8
)


@settings(max_examples=60, deadline=None)
@given(blocks=blocks, cut=st.floats(0, 1))
def test_a_torn_journal_reads_back_as_a_prefix_of_its_records(tmp_path_factory, blocks, cut):
    path = tmp_path_factory.mktemp("j") / "run.journal"
    journal = JournalWriter(path, "host:1", RUN_REQUEST)
    for number, (group, start, payload) in enumerate(blocks, 1):
        journal.append_block(number, group, start, 1, start + 1, [payload])
    journal.append_end(99)
    journal.close()
    data = path.read_bytes()
    opened_size = len(MAGIC) + 200  # the open record is short; cut only after it
    keep = min(len(data), opened_size + int(cut * max(len(data) - opened_size, 0)))
    path.write_bytes(data[:keep])
    expected = [JournalBlock(n, g, s, 1, s + 1, p) for n, (g, s, p) in enumerate(blocks, 1)]
    expected.append(JournalEnd(99))
    try:
        reader = JournalReader(path)
    except E.JournalError:
        assert keep < len(data)  # the open record itself was cut
        return
    with reader:
        assert reader.run == "a/b" and reader.address == "host:1"
        records = [record for _, record in reader.records()]
        assert records == expected[: len(records)]
        if keep == len(data):
            assert records == expected and reader.damaged_bytes == 0


def test_a_flipped_byte_ends_the_readable_part(tmp_path):
    path = tmp_path / "run.journal"
    journal = JournalWriter(path, "host:1", RUN_REQUEST)
    journal.append_block(1, 0, 0, 1, 1, [b"first"])
    second = journal.append_block(2, 0, 1, 1, 2, [b"second"])
    journal.close()
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the second block's payload
    path.write_bytes(bytes(data))
    with JournalReader(path) as reader:
        assert [r.payload for _, r in reader.records()] == [b"first"]
        assert reader.damaged_bytes == len(data) - second


def test_appends_after_a_failed_write_still_name_its_cause(tmp_path):
    # Two threads append (encoder and sender): whichever reports the failure
    # to the user, the cause (here the disk full) must be in it.
    journal = JournalWriter(tmp_path / "run.journal", "host:1", RUN_REQUEST)
    journal._file.close()
    journal._file = open("/dev/full", "wb", buffering=0)  # noqa: SIM115 - writes fail: ENOSPC
    try:
        with pytest.raises(E.JournalError, match=r"cannot write journal .*No space left"):
            journal.append_block(1, 0, 0, 1, 1, [b"x" * 100])
        with pytest.raises(E.JournalError, match=r"No space left.*nothing more is appended"):
            journal.append_block(2, 0, 1, 1, 2, [b"y"])
    finally:
        journal._file.close()


def test_files_that_are_not_journals_are_refused(tmp_path):
    (tmp_path / "text").write_text("hello")
    with pytest.raises(E.JournalError, match="not a trajstore journal"):
        JournalReader(tmp_path / "text")
    (tmp_path / "header-only").write_bytes(MAGIC + b"\xff" * 40)
    with pytest.raises(E.JournalError, match="open record"):
        JournalReader(tmp_path / "header-only")
    with pytest.raises(E.JournalError, match="cannot open"):
        JournalReader(tmp_path / "missing")
    JournalWriter(tmp_path / "taken", "host:1", RUN_REQUEST).close()
    with pytest.raises(E.JournalError, match="already exists"):
        JournalWriter(tmp_path / "taken", "host:1", RUN_REQUEST)
    assert isinstance(E.JournalError("x"), OSError)


# ------------------------------------------------------- spilling with real stores


def test_log_keeps_working_while_the_store_is_away_and_the_journal_uploads_itself(tmp_path):
    port = free_port()
    store = start_store(tmp_path / "data", port=port)
    journal = tmp_path / "spill.journal"
    # 64 KiB of unacknowledged frames at most: without the journal, log() would
    # block for good while the store is away (each frame is 776 bytes).
    log = writer(store.address, "spill/run", journal, max_pending_bytes=64 << 10).__enter__()
    restarted = None
    try:
        for step in range(100):
            log.log(live_state(step), step)
        log.flush()
        assert not journal.exists()  # created only when needed
        store.stop(signal.SIGKILL)
        for step in range(100, 1100):  # 776 kB: spilled, or this loop never ends
            log.log(live_state(step), step)
        log.flush()  # returns once everything is durable in the journal
        assert journal.stat().st_size > 1000 * 776
        assert durable_frames_on_disk(store.run_file("spill/run")) == 100
        restarted = start_store(tmp_path / "data", port=port)
        wait_until(lambda: not journal.exists())  # uploaded, then deleted
        for step in range(1100, 1200):
            log.log(live_state(step), step)
        log.flush()
        assert durable_frames(restarted.address, "spill/run") == 1200
        assert log.reconnects >= 1
    finally:
        log.__exit__(None, None, None)
        if restarted is not None:
            assert restarted.stop() == 0
    assert log.journal_left is None
    assert_every_frame_once(store.run_file("spill/run"), 1200)


def test_the_store_going_away_again_while_the_journal_uploads(tmp_path):
    port = free_port()
    store = start_store(tmp_path / "data", port=port)
    journal = tmp_path / "twice.journal"
    log = writer(store.address, "twice/run", journal, max_pending_bytes=64 << 10).__enter__()
    frames = 0

    def log_frames(count):
        nonlocal frames
        for step in range(frames, frames + count):
            log.log(live_state(step), step)
        frames += count

    try:
        log_frames(10)
        log.flush()
        store.stop(signal.SIGKILL)
        log_frames(6_000)  # 4.7 MB in the journal, uploaded 64 KiB at a time
        log.flush()
        second = start_store(tmp_path / "data", port=port)
        wait_until(lambda: log.reconnects >= 1)
        second.stop(signal.SIGKILL)  # most likely while the journal uploads
        log_frames(2_000)
        log.flush()
        third = start_store(tmp_path / "data", port=port)
        log_frames(100)
        wait_until(lambda: not journal.exists())
        log.flush()
    finally:
        log.__exit__(None, None, None)
    assert third.stop() == 0
    assert log.journal_left is None
    assert_every_frame_once(store.run_file("twice/run"), frames)


def durable_frames_on_disk(path):
    with h5py.File(path, "r", swmr=True) as f:
        return int(f["x"].attrs["frames"])


def test_a_writer_that_ends_while_the_store_is_away_leaves_a_journal_for_push(tmp_path):
    port = free_port()
    store = start_store(tmp_path / "data", port=port)
    journal = tmp_path / "left.journal"
    log = writer(store.address, "left/run", journal).__enter__()
    for step in range(50):
        log.log(live_state(step), step)
    log.flush()
    store.stop(signal.SIGKILL)
    for step in range(50, 300):
        log.log(live_state(step), step)
    with pytest.warns(E.JournalLeftWarning, match="trajstore push"):
        log.__exit__(None, None, None)
    assert log.journal_left == journal and journal.exists()
    restarted = start_store(tmp_path / "data", port=port)
    try:
        pushed = subprocess.run(
            [sys.executable, "-m", "trajstore", "push", str(journal)],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert pushed.returncode == 0, pushed.stderr
        assert "pushed 250 frames" in pushed.stdout
        assert not journal.exists()
    finally:
        assert restarted.stop() == 0
    assert_every_frame_once(store.run_file("left/run"), 300)
    with h5py.File(store.run_file("left/run"), "r") as f:
        assert f.attrs["actual_steps"] == 300  # from the journal's closing record


def start_spilling_writer(store, run, journal, *extra):
    """A live-writer process that spills to ``journal`` after 1 s without the store."""
    return start_live_writer(
        store.address,
        run,
        100_000,
        0.001,
        "--journal",
        str(journal),
        "--reconnect-timeout",
        "1",
        *extra,
    )


def test_a_writer_killed_while_spilling_loses_nothing_it_journaled(tmp_path):
    port = free_port()
    store = start_store(tmp_path / "data", port=port)
    journal = tmp_path / "killed.journal"
    process = start_spilling_writer(store, "killed/run", journal)
    try:
        wait_until(lambda: durable_frames(store.address, "killed/run") >= 50)
        store.stop(signal.SIGKILL)
        wait_until(lambda: journal.exists() and journal.stat().st_size > 300 * 776)
    finally:
        process.kill()  # SIGKILL, mid-record perhaps
        process.communicate(timeout=60)
    restarted = start_store(tmp_path / "data", "--lease-seconds", "2", port=port)
    try:
        result = push_journal(journal)
        assert result.frames_sent >= 300
    finally:
        assert restarted.stop() == 0
    frames = durable_frames_on_disk(store.run_file("killed/run"))
    assert frames >= 350
    assert_every_frame_once(store.run_file("killed/run"), frames)


def test_a_journal_that_fills_its_disk_fails_the_writer_and_says_what_it_holds(tmp_path):
    port = free_port()
    store = start_store(tmp_path / "data", port=port)
    journal = tmp_path / "full.journal"
    # Any file this writer writes stops at 200 kB: its journal runs out of room.
    process = start_spilling_writer(store, "full/run", journal, "--journal-limit", "200000")
    try:
        wait_until(lambda: durable_frames(store.address, "full/run") >= 50)
        store.stop(signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode != 0
    assert "JournalError" in stderr and "cannot write journal" in stderr
    assert "could not be written to it" in stderr  # the note is honest about what is lost
    assert f"trajstore push {journal}" in stderr
    restarted = start_store(tmp_path / "data", "--lease-seconds", "2", port=port)
    try:
        result = push_journal(journal)
        assert result.frames_sent >= 100
        assert result.damaged_bytes > 0 and journal.exists()  # torn at the cap: kept
    finally:
        assert restarted.stop() == 0
    frames = durable_frames_on_disk(store.run_file("full/run"))
    assert frames >= 150
    assert_every_frame_once(store.run_file("full/run"), frames)


def test_a_journal_damaged_while_spilled_fails_the_writer_instead_of_hanging(tmp_path):
    port = free_port()
    store = start_store(tmp_path / "data", port=port)
    journal = tmp_path / "rot.journal"
    log = writer(store.address, "rot/run", journal, max_pending_bytes=64 << 10).__enter__()
    for step in range(10):
        log.log(live_state(step), step)
    log.flush()
    store.stop(signal.SIGKILL)
    for step in range(10, 2_000):
        log.log(live_state(step), step)
    log.flush()  # all in the journal
    with journal.open("r+b") as f:  # a bit flips on the scratch disk, mid-journal
        f.seek(journal.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    restarted = start_store(tmp_path / "data", port=port)
    try:
        wait_until(lambda: log.reconnects >= 1)
        with pytest.raises(E.JournalError, match="damaged") as raised:
            log.__exit__(None, None, None)  # returns: the stream ends, the threads stop
        assert any("trajstore push" in note for note in raised.value.__notes__)
        assert log.journal_left == journal and journal.exists()
        result = push_journal(journal)  # what the writer had not uploaded, up to the damage
        assert result.damaged_bytes > 0 and journal.exists()  # kept, for a look
        frames = durable_frames(restarted.address, "rot/run")
        assert 10 < frames < 2_000
    finally:
        assert restarted.stop() == 0
    assert_every_frame_once(store.run_file("rot/run"), frames)


def test_push_refuses_what_does_not_fit_and_changes_nothing(tmp_path):
    store = start_store(tmp_path / "data", env={"TRAJSTORE_TOKENS": "write:secret-w"})
    try:
        log = writer(store.address, "fit/run", None, token="secret-w").__enter__()
        for step in range(10):
            log.log(live_state(step), step)
        log.__exit__(None, None, None)
        request = pb.OpenRunRequest(run="fit/run", mode=pb.OPEN_MODE_APPEND)
        request.schema.CopyFrom(log._schema)
        frame_bytes = live_state(0)["a"].nbytes + 8
        # Frames 20.. would leave 10..19 missing: refused before anything is sent.
        gap = tmp_path / "gap.journal"
        journal = JournalWriter(gap, store.address, request)
        journal.append_block(1, 0, 20, 1, 21, [bytes(frame_bytes)])
        journal.close()
        with pytest.raises(E.JournalError, match="missing"):
            push_journal(gap, token="secret-w")
        with pytest.raises(E.UnauthenticatedError):
            push_journal(gap, token="wrong")
        # A group the run does not have.
        alien = tmp_path / "alien.journal"
        journal = JournalWriter(alien, store.address, request)
        journal.append_block(1, 5, 10, 1, 11, [bytes(frame_bytes)])
        journal.close()
        with pytest.raises(E.JournalError, match="no group 5"):
            push_journal(alien, token="secret-w")
        # A block whose bytes do not match the schema: the store's own typed error.
        short = tmp_path / "short.journal"
        journal = JournalWriter(short, store.address, request)
        journal.append_block(1, 0, 10, 1, 11, [bytes(frame_bytes - 1)])
        journal.close()
        with pytest.raises(E.FrameMismatchError):
            push_journal(short, token="secret-w")
        assert gap.exists() and alien.exists() and short.exists()  # kept after a failure
        assert durable_frames_on_disk(store.run_file("fit/run")) == 10
        # A writer will not overwrite a journal waiting to be pushed.
        with pytest.raises(E.JournalError, match="already exists"):
            writer(store.address, "fit/other", gap, token="secret-w").__enter__()
    finally:
        assert store.stop() == 0
    assert_every_frame_once(store.run_file("fit/run"), 10)
    with h5py.File(store.run_file("fit/run"), "r") as f:
        assert f.attrs["actual_steps"] == 10  # the failed pushes left it alone


def test_without_a_journal_the_writer_fails_clearly(tmp_path):
    store = start_store(tmp_path / "data")
    log = writer(store.address, "plain/run", None).__enter__()
    log.log(live_state(0), 0)
    log.flush()
    store.stop(signal.SIGKILL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no journal, no JournalLeftWarning
        with pytest.raises(E.UnavailableError, match="were not stored"):
            for step in range(1, 100_000):
                log.log(live_state(step), step)
            log.flush()
    log._sender.cancel()


def test_a_flush_whose_blocks_cannot_reach_the_journal_raises_instead_of_hanging(tmp_path):
    store = start_store(tmp_path / "data")
    journal = tmp_path / "full.journal"
    # Frames wait in the writer until a flush seals them: the flush itself meets the full disk.
    log = writer(store.address, "full/flush", journal, send_interval=3600).__enter__()
    failure: list[BaseException] = []

    def flush():
        try:
            log.flush()
        except BaseException as e:  # the test inspects whatever it was
            failure.append(e)

    try:
        log.log(live_state(0), 0)
        log.flush()
        store.stop(signal.SIGKILL)
        sender = log._sender
        wait_until(lambda: sender._journal is not None)  # spilling from now on
        with sender._cond:  # the journal's disk is full from here on
            sender._journal._file.close()
            sender._journal._file = open("/dev/full", "wb", buffering=0)  # noqa: SIM115
        for step in range(1, 20):
            log.log(live_state(step), step)
        flushing = threading.Thread(target=flush, daemon=True)
        flushing.start()
        flushing.join(120)
        assert not flushing.is_alive(), "flush() never returned after the journal failed"
        assert len(failure) == 1 and isinstance(failure[0], E.JournalError), failure
        assert "No space left" in str(failure[0])
    finally:
        with warnings.catch_warnings(), contextlib.suppress(E.TrajstoreError):
            warnings.simplefilter("ignore")
            log.__exit__(None, None, None)

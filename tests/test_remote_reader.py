"""The analyst's client: list, describe, pull; transfers limited to what was asked."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from test_remote_writer import assert_same_file
from trajstore import (
    EveryNStep,
    HDF5StorageReader,
    RemoteStorageWriter,
    WriterGroupConfig,
    connect,
    view,
)
from trajstore import errors as E
from trajstore.blockcodec import IncomingArrays, IncomingPart
from trajstore.client.reader import RemoteLeaves, _assemble, _unpack
from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.store.indexing import plan_index
from trajstore.store.reader import RunFileReader
from trajstore.store.writer import RunFileWriter
from trajstore.v1 import query_pb2 as qpb

from helpers import advance, md_config, md_state, run_in_threads
from servers import start_store, wait_until


def write(store, run, steps=20, **kwargs):
    state = md_state()
    with RemoteStorageWriter(store.address, run, md_config(every=1), state, steps, **kwargs) as log:
        for step in range(steps):
            state = advance(state, step)
            log.log(state, step)


def test_list_runs_reports_frames_state_size_and_metadata(store):
    write(store, "proj/a", metadata={"T": 300})
    write(store, "proj/b", steps=5)
    write(store, "other", steps=3)
    state = md_state()
    with RemoteStorageWriter(store.address, "proj/open", md_config(every=1), state, 9) as log:
        log.log(state, 0)
        log.flush()
        with connect(store.address) as client:
            runs = {r.name: r for r in client.list_runs()}
            assert sorted(runs) == ["other", "proj/a", "proj/b", "proj/open"]
            assert [r.name for r in client.list_runs(prefix="proj/")] == [
                "proj/a",
                "proj/b",
                "proj/open",
            ]
    a, b, live = runs["proj/a"], runs["proj/b"], runs["proj/open"]
    assert a.frames == {"group['box']": 1, "group['energy']": 20, "group['traj']": 20}
    assert b.frames["group['traj']"] == 5
    assert (a.open, live.open) == (False, True)
    assert live.frames["group['energy']"] == 1
    assert a.metadata == {"T": 300}
    assert a.actual_steps == 20
    assert a.size_bytes == store.run_file("proj/a").stat().st_size
    assert 0 < a.created <= a.updated


def test_pull_makes_a_local_copy_the_local_reader_opens(store, tmp_path):
    write(store, "proj/p", steps=30)
    with connect(store.address) as client:
        path = client.pull("proj/p", tmp_path / "copy.h5", chunk_bytes=10_000)
    assert path == tmp_path / "copy.h5"
    assert not (tmp_path / "copy.h5.part").exists()
    with HDF5StorageReader(path) as reader:
        assert reader.actual_steps == 30
        assert len(reader.focus_group("group['traj']")) == 30
    assert_same_file(path, store.run_file("proj/p"))


def test_pull_never_replaces_a_file_unasked_and_names_a_missing_directory(store, tmp_path):
    write(store, "proj/p", steps=3)
    existing = tmp_path / "mine.h5"
    existing.write_bytes(b"an analyst's own file")
    with connect(store.address) as client:
        with pytest.raises(E.RunExistsError, match="overwrite=True"):
            client.pull("proj/p", existing)
        assert existing.read_bytes() == b"an analyst's own file"
        client.pull("proj/p", existing, overwrite=True)
        assert_same_file(existing, store.run_file("proj/p"))
        with pytest.raises(E.StorageError, match=r"no directory .*absent"):
            client.pull("proj/p", tmp_path / "absent" / "x.h5")
    assert not (tmp_path / "absent").exists()


def test_pull_of_an_absent_run_leaves_nothing(store, tmp_path):
    target = tmp_path / "pulled"
    target.mkdir()
    with connect(store.address) as client, pytest.raises(E.RunNotFoundError):
        client.pull("nope", target / "x.h5")
    assert list(target.iterdir()) == []


def test_select_asks_only_for_the_selected_leaves(store):
    write(store, "proj/s")
    with connect(store.address) as client, client.open_run("proj/s") as reader:
        calls = reader.calls
        asked = []
        original = calls.read

        def spy(request, **kwargs):
            asked.append(list(request.leaves))
            return original(request, **kwargs)

        calls.read = spy
        traj = reader.focus_group("group['traj']")
        pos = traj.read(slice(2, 4), select=lambda s: s["pos"])
        vel_follow = list(traj.follow(start=18, select=lambda s: s["vel"]))
    assert asked == [[0]]  # pos is leaf 0 of {"pos", "vel"}
    assert pos.shape == (2, 16, 3)
    assert len(vel_follow) == 2


def test_bad_run_names_and_unreachable_stores(store):
    with connect(store.address) as client:
        with pytest.raises(E.InvalidRunNameError):
            client.open_run("../etc/passwd")
        with pytest.raises(E.RunNotFoundError):
            client.open_run("absent")
    with pytest.raises(E.UnavailableError):
        connect("127.0.0.1:1", timeout=5).list_runs()


def test_follow_of_a_group_without_time_axis_is_refused(store):
    write(store, "proj/once", steps=2)
    with connect(store.address) as client, client.open_run("proj/once") as reader:
        with pytest.raises(E.InvalidArgumentError, match="no time axis"):
            list(reader.focus_group("group['box']").follow())
        with pytest.raises(E.FrameIndexError):
            list(reader.focus_group("group['traj']").follow(start=-1))


def test_server_reads_in_bounded_pieces(tmp_path):
    spec = RunSpec(groups=(GroupSpec("group", True, (LeafSpec("", "float32", (100, 10)),)),))
    writer = RunFileWriter(tmp_path / "r.h5", spec)
    data = np.arange(50 * 100 * 10, dtype=np.float32).reshape(50, 100, 10)
    writer.write_block(0, 0, 50, [data])
    writer.close()
    reader = RunFileReader(tmp_path / "r.h5")
    for index in (
        slice(None),
        slice(None, None, -3),
        (slice(5, 40, 2), 7),
        (..., 3),
        (slice(None), slice(None, None, -1), slice(2, 5)),
    ):
        plan = plan_index(index, (50, 100, 10))
        pieces = list(reader.read_chunks(0, 0, plan, frames=50, chunk_bytes=10_000))
        assert all(p.nbytes <= max(10_000, 4000) for p in pieces)
        np.testing.assert_array_equal(np.concatenate(pieces), data[index])
    reader.close()


def test_one_frame_is_one_fetch_and_a_frame_too_big_for_a_message_streams(tmp_path):
    store = start_store(tmp_path / "data", "--max-message-bytes", str(64 << 10))
    try:
        first = {"x": np.arange(40_000, dtype=np.float32).reshape(200, 200)}  # 160 kB frames
        config = {"x": WriterGroupConfig(view(lambda s: s["x"]), EveryNStep(1))}
        with RemoteStorageWriter(
            store.address, "big", config, first, 3, compile_views=False
        ) as log:
            for step in range(3):
                log.log({"x": first["x"] + step}, step)
        write(store, "small")
        used = []
        with connect(store.address) as client:
            with client.open_run("small") as reader:
                calls = reader.calls
                calls.fetch = spy(calls.fetch, "Fetch", used)
                calls.read = spy(calls.read, "Read", used)
                traj = reader.focus_group("group['traj']")
                last = traj.read(-1)
                assert used == ["Fetch"]
                last["pos"][0, 0] = -1  # results are writable, like local ones
                used.clear()
                traj.read(slice(0, 2))
                assert used == ["Read"]
            with client.open_run("big") as reader:
                x = reader.focus_group("group['x']").read(2)  # Fetch refused, then Read
        np.testing.assert_array_equal(x, first["x"] + 2)
    finally:
        assert store.stop() == 0
    with HDF5StorageReader(store.run_file("small")) as local:
        expected = local.focus_group("group['traj']")[-1]
    np.testing.assert_array_equal(last["vel"], expected["vel"])
    np.testing.assert_array_equal(last["pos"][1:], expected["pos"][1:])


def assert_frames_equal(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_frames_read_one_at_a_time_share_one_fetch_stream(tmp_path):
    # Three read threads, one of which may serve a fetch stream; one host may use all three.
    store = start_store(
        tmp_path / "data",
        *("--max-workers", "6", "--write-workers", "3", "--max-reads-per-peer", "3"),
    )
    try:
        write(store, "run")
        with HDF5StorageReader(store.run_file("run")) as local:
            expected = [local.focus_group("group['traj']")[i] for i in range(20)]
        with (
            connect(store.address) as client,
            client.open_run("run") as first,
            client.open_run("run") as second,
        ):
            stream = first.calls.fetch_stream
            stream.idle_seconds = 0.5
            traj = first.focus_group("group['traj']")
            for i in (3, 0, 19, 7):
                assert_frames_equal(traj.read(i), expected[i])
            assert stream.is_open
            # The store's only fetch stream is taken: the second reader is
            # refused one and makes Fetch calls.
            assert_frames_equal(second.focus_group("group['traj']").read(5), expected[5])
            assert not second.calls.fetch_stream.is_open
            # A bad index ends the stream with the typed error; the next read opens another.
            with pytest.raises(E.FrameIndexError):
                traj.read(20)
            assert not stream.is_open
            assert_frames_equal(traj.read(-1), expected[19])
            assert stream.is_open
            # Idle, the stream ends and its thread on the store is free for another reader.
            wait_until(lambda: not stream.is_open, timeout=30)
            with client.open_run("run") as third:
                assert_frames_equal(third.focus_group("group['traj']").read(2), expected[2])
                assert third.calls.fetch_stream.is_open
    finally:
        assert store.stop() == 0


def test_one_frame_reads_see_a_closed_run_grow_when_it_is_appended_to_or_overwritten(store):
    def log_steps(steps, mode):
        config = {"x": WriterGroupConfig(view(lambda s: s["x"]), EveryNStep(1))}
        first = {"x": np.zeros(4, np.float32)}
        with RemoteStorageWriter(
            store.address, "grows", config, first, 100, mode=mode, compile_views=False
        ) as log:
            for step in steps:
                log.log({"x": np.full(4, step, np.float32)}, step)

    log_steps(range(10), "create")
    with connect(store.address) as client, client.open_run("grows") as reader:
        x = reader.focus_group("group['x']")
        assert x.read(-1)[0] == 9  # the store now holds the run's frame count
        log_steps(range(10, 15), "append")
        assert x.read(-1)[0] == 14
        assert x.read(14)[0] == 14
        log_steps(range(3), "overwrite")
        assert x.read(-1)[0] == 2
        with pytest.raises(E.FrameIndexError):
            x.read(3)


def test_threads_reading_frames_of_one_reader_all_get_theirs(tmp_path):
    store = start_store(tmp_path / "data")
    try:
        write(store, "run")
        with HDF5StorageReader(store.run_file("run")) as local:
            expected = [local.focus_group("group['traj']")[i] for i in range(20)]
        with connect(store.address) as client, client.open_run("run") as reader:
            traj = reader.focus_group("group['traj']")

            def read_all(offset):
                for k in range(60):
                    i = (offset + k) % 20
                    assert_frames_equal(traj.read(i), expected[i])

            failures = run_in_threads(read_all, 4)
        assert not failures, failures
    finally:
        assert store.stop() == 0


def test_a_store_that_stops_answering_a_fetch_stream_is_unavailable(tmp_path):
    store = start_store(tmp_path / "data")
    try:
        write(store, "run")
        with connect(store.address, timeout=1.0) as client, client.open_run("run") as reader:
            traj = reader.focus_group("group['traj']")
            traj.read(0)
            assert reader.calls.fetch_stream.is_open
            os.kill(store.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(E.UnavailableError, match="did not answer"):
                    traj.read(1)
            finally:
                os.kill(store.process.pid, signal.SIGCONT)
            with HDF5StorageReader(store.run_file("run")) as local:
                assert_frames_equal(traj.read(2), local.focus_group("group['traj']")[2])
    finally:
        assert store.stop() == 0


def spy(method, name, used):
    def call(request, **kwargs):
        used.append(name)
        return method(request, **kwargs)

    return call


def test_a_read_of_many_pieces_matches_the_local_file(tmp_path):
    # 2 leaves x 6 frames x 4 MB: more than one 16 MiB piece, so the store reads ahead.
    store = start_store(tmp_path / "data")
    try:
        rng = np.random.default_rng(7)
        states = [
            {
                "a": rng.random((1000, 1000), dtype=np.float32),
                "b": rng.random((1000, 1000), dtype=np.float32),
            }
            for _ in range(6)
        ]
        config = {"s": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
        with RemoteStorageWriter(
            store.address, "many", config, states[0], 6, compile_views=False
        ) as log:
            for step, state in enumerate(states):
                log.log(state, step)
        with connect(store.address) as client, client.open_run("many") as reader:
            group = reader.focus_group("group['s']")
            backwards = group.read(slice(None, None, -1))
            strided = group.read((slice(None), slice(None, None, 3)))
    finally:
        assert store.stop() == 0
    with HDF5StorageReader(store.run_file("many")) as local:
        expected = local.focus_group("group['s']")
        for leaf in ("a", "b"):
            np.testing.assert_array_equal(backwards[leaf], expected[::-1][leaf])
            np.testing.assert_array_equal(strided[leaf], expected[:, ::3][leaf])


def test_read_chunked_fetches_one_chunk_ahead_and_stops_when_left(store, monkeypatch):
    write(store, "proj/chunks", steps=20)
    with HDF5StorageReader(store.run_file("proj/chunks")) as local:
        expected = list(local.focus_group("group['traj']").read_chunked(3))
    with connect(store.address) as client, client.open_run("proj/chunks") as run:
        traj = run.focus_group("group['traj']")
        asked = []  # the index of every read the reader sends
        source_read = RemoteLeaves.read  # read_chunked reads through a pinned copy

        def counting_read(self, leaves, index):
            asked.append(index)
            return source_read(self, leaves, index)

        monkeypatch.setattr(RemoteLeaves, "read", counting_read)
        chunks = traj.read_chunked(3)
        first = next(chunks)
        deadline = time.monotonic() + 10
        while len(asked) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # the second chunk is fetched while the first is in hand
        assert asked[:2] == [slice(0, 3), slice(3, 6)]
        chunks.close()  # leaving early stops the fetching thread
        assert not [t for t in threading.enumerate() if t.name == "trajstore-read-ahead"]
        assert len(asked) <= 3  # never more than one chunk past the one in hand
        rest = list(traj.read_chunked(3))
    np.testing.assert_array_equal(first["pos"], expected[0]["pos"])
    for got, want in zip(rest, expected, strict=True):
        np.testing.assert_array_equal(got["pos"], want["pos"])
        np.testing.assert_array_equal(got["vel"], want["vel"])


def test_a_follower_that_stops_reading_does_not_keep_a_writer_from_the_run(store):
    # 80 MB of frames: far more than gRPC buffers for a follower that reads nothing.
    state = {"x": np.zeros(1_000_000, np.float32)}
    config = {"x": WriterGroupConfig(view(lambda s: s["x"]), EveryNStep(1))}
    with RemoteStorageWriter(store.address, "stalled/run", config, state, 20) as log:
        for step in range(20):
            log.log({"x": np.full(1_000_000, step, np.float32)}, step)
    with connect(store.address) as client, client.open_run("stalled/run") as reader:
        follow = reader.focus_group("group['x']").follow()
        first = next(follow)  # the store is sending; this follower reads no further
        np.testing.assert_array_equal(first[:3], [0, 0, 0])
        with RemoteStorageWriter(
            store.address, "stalled/run", config, state, 21, mode="append", timeout=20
        ) as log:
            log.log({"x": np.full(1_000_000, 20, np.float32)}, 20)
        rest = [int(frame[0]) for frame in follow]  # it goes on, and sees the appended frame
        assert rest == list(range(1, 21))


# ------------------------------------------------- answers that do not add up


def _parts(*pieces):
    return iter(
        IncomingPart(qpb.ReadResponse(leaf=leaf, offset=offset), memoryview(data))
        for leaf, offset, data in pieces
    )


def test_a_read_whose_parts_do_not_fill_the_result_raises_never_returns_garbage():
    results = [qpb.LeafResult(shape=[2, 2]), qpb.LeafResult(shape=[3])]
    dtypes = [np.dtype(np.float32), np.dtype(np.int8)]
    a, b = np.arange(4, dtype=np.float32).tobytes(), b"\x01\x02\x03"
    whole = _assemble(results, dtypes, _parts((0, 0, a[:8]), (0, 8, a[8:]), (1, 0, b)))
    np.testing.assert_array_equal(whole[0], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(whole[1], [1, 2, 3])
    for pieces in (
        [(0, 0, a[:8]), (1, 0, b)],  # leaf 0 short (a store cut the read)
        [(0, 0, a)],  # leaf 1 missing
        [(0, 8, a[8:]), (0, 0, a[:8]), (1, 0, b)],  # out of order
        [(0, 0, a), (0, 0, a), (1, 0, b)],  # twice
        [(0, 0, a + b"xx"), (1, 0, b)],  # too long
        [(0, 0, a), (2, 0, b)],  # no such leaf
    ):
        with pytest.raises(E.StorageError, match="incomplete"):
            _assemble(results, dtypes, _parts(*pieces))


def test_a_fetch_whose_arrays_do_not_match_their_shapes_raises():
    def fetched(results, data):
        return IncomingArrays(qpb.FetchResponse(results=results), [memoryview(d) for d in data])

    shape = [qpb.LeafResult(shape=[2])]
    dtypes = [np.dtype(np.int16)]
    np.testing.assert_array_equal(_unpack(fetched(shape, [b"\x01\x00\x02\x00"]), dtypes), [[1, 2]])
    for results, data in ((shape, [b"\x01\x00"]), (shape, []), (shape * 2, [b"\0" * 4] * 2)):
        with pytest.raises(E.StorageError, match="incomplete"):
            _unpack(fetched(results, data), dtypes)


def test_a_read_planned_before_its_frames_were_rewritten_raises_instead_of_coming_back_short(
    tmp_path,
):
    spec = RunSpec(groups=(GroupSpec("group", True, (LeafSpec("", "float32", (3,)),)),))
    path = tmp_path / "run.h5"
    writer = RunFileWriter(path, spec)
    try:
        writer.write_block(0, 0, 10, [np.ones((10, 3), np.float32)])
        writer.flush()
        reader = RunFileReader(path)
        try:
            plan = reader.plan(0, 0, slice(None), 10)  # planned for the 10 frames acknowledged
            # The writer rewrites from frame 4 (a resend after a reconnect) before the read.
            writer.write_block(0, 4, 2, [np.zeros((2, 3), np.float32)])
            with pytest.raises(E.FailedPreconditionError, match="rewritten"):
                reader.read_plans(0, [0], [plan], frames=10)
            with pytest.raises(E.FailedPreconditionError, match="rewritten"):
                reader.read(0, [0], 8, frames=10)  # an index past the new end
            np.testing.assert_array_equal(reader.read(0, [0], slice(None), frames=6)[0][4], 0)
        finally:
            reader.close()
    finally:
        writer.close()


def test_a_follow_of_a_store_that_stops_answering_raises_instead_of_waiting(tmp_path):
    # No data moves while a follow waits for frames; keepalive pings notice that the
    # store stopped answering (SIGSTOP: the connection stays up, nobody replies).
    store = start_store(tmp_path / "data")
    state = md_state()
    log = RemoteStorageWriter(store.address, "quiet/run", md_config(every=1), state, 10)
    log.__enter__()
    outcome: list[BaseException | str] = []
    following = threading.Event()

    def follow():
        try:
            with connect(store.address) as client, client.open_run("quiet/run") as reader:
                for _ in reader.focus_group("group['energy']").follow():
                    following.set()
            outcome.append("ended")
        except BaseException as e:  # the test inspects whatever it was
            outcome.append(e)

    try:
        log.log(state, 0)
        log.flush()
        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        assert following.wait(60)
        os.kill(store.process.pid, signal.SIGSTOP)
        try:
            follower.join(180)  # keepalive: 30 s between pings, 10 s for the answer
            assert not follower.is_alive(), "the follow still waits on a store that is gone"
        finally:
            os.kill(store.process.pid, signal.SIGCONT)
        assert len(outcome) == 1 and isinstance(outcome[0], E.UnavailableError), outcome
    finally:
        log._sender.cancel()  # its stream may have broken too; abandon it
        assert store.stop() == 0


def test_open_run_in_a_with_block_opens_one_connection(store):
    write(store, "once")
    with connect(store.address) as client:
        reader = client.open_run("once")
        calls = reader.calls
        with reader:  # the README's way: entering again keeps the same connection
            assert reader.calls is calls
            assert len(reader.focus_group("group['traj']")) == 20
        with pytest.raises(E.NotOpenError):
            reader.calls  # noqa: B018 - closed on leaving the block

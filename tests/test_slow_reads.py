"""A slow reader never keeps a writer out of its run (issue 16, item 5), with real processes.

A Read streams a large result piece by piece; the store holds the run's
handle only while it reads a piece, never while the reader takes its time.
A writer reopening the run -- to append, or reconnecting after a network
drop -- gets in while the read is open; a read whose run is overwritten
under it ends with a typed error, never with data of two versions. And a
writer whose reconnection meets a run held for a moment tries again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc
import numpy as np
import pytest

from trajstore import (
    EveryNStep,
    HDF5StorageReader,
    RemoteStorageWriter,
    WriterGroupConfig,
    view,
    wire,
)
from trajstore import errors as E
from trajstore.v1 import query_pb2 as qpb
from trajstore.v1 import query_pb2_grpc as qpb_grpc

from servers import start_store, wait_until
from tcp_proxy import TcpProxy

#: Rows of a frame's leaf ``a``: float32 (65536, 4), 1 MiB a frame. A read of
#: 128 frames is eight pieces of the store's 16 MiB, sent in messages of 1 MiB
#: (:data:`MESSAGE_BYTES`): far more than the store reads ahead and the
#: network buffers hold (about 48 MiB seen) for a reader that does not read.
ROWS = 1 << 16
FRAMES = 128
MESSAGE_BYTES = 1 << 20
RUN = "slow/run"


def config() -> dict[str, WriterGroupConfig[Any, Any]]:
    return {"x": WriterGroupConfig(view(lambda s: {"a": s["a"], "b": s["b"]}), EveryNStep(1))}


def state(value: int) -> dict[str, Any]:
    """Frame ``value``: every number in it is ``value``."""
    return {"a": np.full((ROWS, 4), value, np.float32), "b": np.int64(value)}


def writer(address: str, mode: str = "create", **options: Any) -> RemoteStorageWriter:
    """An entered writer of :data:`RUN` (the caller exits it)."""
    return RemoteStorageWriter(
        address, RUN, config(), state(0), mode=mode, compile_views=False, **options
    ).__enter__()


def log_frames(log: RemoteStorageWriter, steps: range, offset: int = 0) -> None:
    for step in steps:
        log.log(state(step + offset), step)


def write_run(address: str, frames: int = FRAMES, mode: str = "create", offset: int = 0) -> None:
    """A closed run whose frame ``i`` holds ``i + offset``."""
    log = writer(address, mode)
    try:
        log_frames(log, range(frames), offset)
    finally:
        log.__exit__(None, None, None)


class SlowRead:
    """A raw Read of frames ``[0, frames)`` of :data:`RUN` that reads nothing until told."""

    def __init__(self, address: str, frames: int = FRAMES) -> None:
        # No window growth (BDP probes): the network holds little of a read not read.
        self.channel = grpc.insecure_channel(
            address,
            options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.http2.bdp_probe", 0)],
        )
        components, is_tuple = wire.index_to_proto(slice(0, frames))
        request = qpb.ReadRequest(
            run=RUN, group="group['x']", index=components, index_is_tuple=is_tuple
        )
        self.responses = qpb_grpc.QueryServiceStub(self.channel).Read(request, timeout=600)
        self.results = next(self.responses).results  # the shapes; the data waits for us
        self.data = [bytearray() for _ in self.results]

    def read_one(self) -> None:
        """Take one more message of the stream."""
        self._take(next(self.responses))

    def read_rest(self) -> list[np.ndarray]:
        """Everything left, as the leaves' arrays; a store error comes back typed."""
        try:
            for response in self.responses:
                self._take(response)
        except grpc.RpcError as e:
            raise wire.error_from_rpc(e) from None
        dtypes = [np.float32, np.int64]
        return [
            np.frombuffer(bytes(data), dtype).reshape(tuple(result.shape))
            for data, dtype, result in zip(self.data, dtypes, self.results, strict=True)
        ]

    def _take(self, response: qpb.ReadResponse) -> None:
        data = self.data[response.leaf]
        assert response.offset == len(data)  # parts arrive in order
        data.extend(response.data)

    def close(self) -> None:
        self.responses.cancel()
        self.channel.close()


def assert_frames(leaves: list[np.ndarray], frames: int, offset: int = 0) -> None:
    """Frame ``i`` of the read holds ``i + offset`` everywhere."""
    a, b = leaves
    expected = np.arange(frames) + offset
    np.testing.assert_array_equal(b, expected)
    assert a.shape == (frames, ROWS, 4)
    np.testing.assert_array_equal(a.min(axis=(1, 2)), expected)
    np.testing.assert_array_equal(a.max(axis=(1, 2)), expected)


@pytest.fixture
def store(tmp_path):
    store = start_store(tmp_path / "data", "--max-message-bytes", str(MESSAGE_BYTES))
    yield store
    assert store.stop() == 0


def test_a_writer_appends_while_a_slow_read_is_open_and_the_read_stays_whole(store):
    write_run(store.address)
    read = SlowRead(store.address)
    try:
        read.read_one()  # the store is now waiting on the reader
        log = writer(store.address, "append")  # before: RunLockedError after 30 s
        try:
            log_frames(log, range(FRAMES, FRAMES + 4))
        finally:
            log.__exit__(None, None, None)
        assert_frames(read.read_rest(), FRAMES)  # the frames it planned, unchanged
    finally:
        read.close()


def test_a_writer_reconnecting_while_a_slow_read_is_open_keeps_every_frame(store):
    proxy = TcpProxy(store.address)
    log = writer(proxy.address)
    read = None
    try:
        log_frames(log, range(FRAMES))
        log.flush()
        read = SlowRead(store.address)  # straight to the store: the drop spares it
        read.read_one()
        proxy.reset()  # the network drops; the store keeps the writer's session
        log_frames(log, range(FRAMES, FRAMES + 8))
        # Its takeover of that session reopens the run while the read is open.
        wait_until(lambda: log.reconnects >= 1)
        log.flush()  # before: RunLockedError, the writer dead
        log.__exit__(None, None, None)
        assert_frames(read.read_rest(), FRAMES)
    finally:
        log.__exit__(None, None, None)
        if read is not None:
            read.close()
        proxy.close()
    read = SlowRead(store.address, FRAMES + 8)
    try:
        assert_frames(read.read_rest(), FRAMES + 8)  # every frame once
    finally:
        read.close()


def test_a_read_whose_run_is_overwritten_under_it_ends_with_a_typed_error(store):
    write_run(store.address)
    read = SlowRead(store.address)
    try:
        read.read_one()
        write_run(store.address, FRAMES + 8, mode="overwrite", offset=1000)
        with pytest.raises(E.RunChangedError, match="changed while it was read"):
            read.read_rest()
        # What came before the error was the old run's, and only that.
        got = np.frombuffer(bytes(read.data[0]), np.float32).reshape(-1, ROWS * 4)
        assert 1 <= len(got) < FRAMES
        np.testing.assert_array_equal(got.min(axis=1), np.arange(len(got)))
        np.testing.assert_array_equal(got.max(axis=1), np.arange(len(got)))
    finally:
        read.close()
    read = SlowRead(store.address, FRAMES + 8)  # read again: the new run
    try:
        assert_frames(read.read_rest(), FRAMES + 8, offset=1000)
    finally:
        read.close()


def test_a_reconnecting_writer_that_meets_a_held_run_tries_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="trajstore.client")
    store = start_store(tmp_path / "data", "--lease-seconds", "2")
    proxy = TcpProxy(store.address)
    log = writer(proxy.address, send_interval=0.01)
    other = None
    try:
        log_frames(log, range(8))
        log.flush()
        proxy.refuse()  # the network stays down past the writer's lease
        log_frames(log, range(8, 12))

        def second_writer_opens():
            nonlocal other
            try:
                other = writer(store.address, "append")
            except E.RunLockedError:
                return False  # the lease has not lapsed yet
            return True

        wait_until(second_writer_opens, interval=0.2)
        proxy.accept()  # the network is back, but another writer holds the run
        flushed: list[BaseException | None] = []

        def flush():
            try:
                log.flush()
            except BaseException as e:  # checked by the test
                flushed.append(e)
            else:
                flushed.append(None)

        flushing = threading.Thread(target=flush)
        flushing.start()
        wait_until(lambda: flushed or "is being written by another writer" in caplog.text)
        assert not flushed, flushed  # before: RunLockedError, the writer dead
        assert other is not None
        other.__exit__(None, None, None)  # ... briefly
        other = None
        flushing.join(120)
        assert flushed == [None]
        log_frames(log, range(12, 16))
        log.flush()
        assert log.reconnects >= 1
    finally:
        log.__exit__(None, None, None)
        if other is not None:
            other.__exit__(None, None, None)
        proxy.close()
        assert store.stop() == 0
    with HDF5StorageReader(store.run_file(RUN)) as reader:
        values = reader.focus_group("group['x']")[:]
    np.testing.assert_array_equal(values["b"], np.arange(16))  # every frame once

"""Capacity and access at the gate: no caller without a token takes capacity, writers always
get in, idle read calls end (issue 16, item 3). Real store processes throughout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from trajstore import (
    EveryNStep,
    HDF5StorageReader,
    HDF5StorageWriter,
    RemoteStorageWriter,
    WriterGroupConfig,
    connect,
    view,
    wire,
)
from trajstore import errors as E
from trajstore.v1 import query_pb2 as qpb
from trajstore.v1 import query_pb2_grpc as qpb_grpc

from servers import live_config, live_state, start_store, wait_until

WRITE, READ = "w-token-1", "r-token-2"
TOKENS = f"write:{WRITE}, read:{READ}"


def auth(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


class Held:
    """Request iterators that send ``first`` (if any), then wait until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def requests(self, *first: Any) -> Iterator[Any]:
        yield from first
        self.release.wait()


def reflection_call(channel: grpc.Channel, held: Held, token: str | None, *first: Any) -> Any:
    return reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        held.requests(*first), metadata=auth(token)
    )


def list_services(channel: grpc.Channel, token: str | None) -> set[str]:
    responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        metadata=auth(token),
        timeout=60,
    )
    return {s.name for r in responses for s in r.list_services_response.service}


def read_request(run: str, group: str = "group['x']") -> qpb.ReadRequest:
    components, is_tuple = wire.index_to_proto(slice(None))
    return qpb.ReadRequest(run=run, group=group, index=components, index_is_tuple=is_tuple)


def open_live_run(address: str, run: str, token: str | None) -> RemoteStorageWriter:
    """A writer with one durable frame, left open and quiet (followers of it wait)."""
    writer = RemoteStorageWriter(address, run, live_config(), live_state(0), 100, token=token)
    writer.__enter__()
    writer.log(live_state(0), 0)
    writer.flush()
    return writer


def write_run(address: str, run: str, token: str | None, frames: int = 3) -> None:
    with RemoteStorageWriter(
        address, run, live_config(), live_state(0), frames, token=token
    ) as log:
        for step in range(frames):
            log.log(live_state(step), step)


def test_reflection_and_health_watch_need_a_token_when_tokens_are_configured(tmp_path):
    guarded = start_store(tmp_path / "guarded", env={"TRAJSTORE_TOKENS": TOKENS})
    open_store = start_store(tmp_path / "open")
    try:
        with grpc.insecure_channel(guarded.address) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                list_services(channel, None)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "trajstore.v1.IngestService" in list_services(channel, READ)
            health = health_pb2_grpc.HealthStub(channel)
            check = health.Check(health_pb2.HealthCheckRequest(), timeout=60)
            assert check.status == health_pb2.HealthCheckResponse.SERVING  # no token needed
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
            with pytest.raises(grpc.RpcError) as refused:
                next(watch)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            watch = health.Watch(health_pb2.HealthCheckRequest(), metadata=auth(READ), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
        with grpc.insecure_channel(open_store.address) as channel:  # no tokens, loopback
            assert "trajstore.v1.QueryService" in list_services(channel, None)
    finally:
        assert guarded.stop() == 0, "".join(guarded.log)
        assert open_store.stop() == 0, "".join(open_store.log)


def test_idle_streams_of_other_callers_never_lock_out_a_writer(tmp_path):
    # 8 threads: 4 for ingest calls, 4 for reads; one host may take the whole read share.
    store = start_store(
        tmp_path / "data",
        "--max-workers",
        "8",
        "--write-workers",
        "4",
        "--max-reads-per-peer",
        "100",
        "--idle-stream-seconds",
        "600",
        env={"TRAJSTORE_TOKENS": TOKENS},
    )
    held = Held()
    calls: list[Any] = []
    live = None
    try:
        write_run(store.address, "closed", WRITE)
        live = open_live_run(store.address, "live", WRITE)
        with grpc.insecure_channel(store.address) as channel:
            query = qpb_grpc.QueryServiceStub(channel)
            # Callers without a token: idle reflection and health Watch streams, many.
            anonymous = [reflection_call(channel, held, None) for _ in range(16)]
            anonymous += [
                health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
                for _ in range(4)
            ]
            calls += anonymous
            # A read token's idle streams of every kind, then Follows of the quiet live
            # run until the read share is full (a read is refused for want of threads).
            calls.append(reflection_call(channel, held, READ))
            calls.append(query.FetchStream(held.requests(), metadata=auth(READ)))
            calls.append(query.Read(read_request("closed"), metadata=auth(READ)))
            follow = qpb.FollowRequest(run="live", group="group['x']", start=1)

            def read_share_full() -> bool:
                try:
                    with connect(store.address, token=READ, timeout=60) as client:
                        client.list_runs()
                except E.ResourceExhaustedError as e:
                    assert "read share" in str(e)
                    return True
                calls.append(query.Follow(follow, metadata=auth(READ)))
                return False

            wait_until(read_share_full)
            # The writer gets in all the same: opens, writes and closes a run.
            write_run(store.address, "fresh", WRITE, frames=5)
            with HDF5StorageReader(store.run_file("fresh")) as reader:
                assert len(reader.focus_group("group['x']")) == 5
            # Nobody without a token took a thread: each was refused at once.
            for call in anonymous:
                assert call.exception(timeout=60).code() == grpc.StatusCode.UNAUTHENTICATED
            for call in calls:
                call.cancel()
    finally:
        held.release.set()
        for call in calls:
            call.cancel()
        if live is not None:
            live.__exit__(None, None, None)
        assert store.stop() == 0, "".join(store.log)


def test_one_host_holds_at_most_its_share_of_reads(tmp_path):
    store = start_store(
        tmp_path / "data",
        "--max-workers",
        "16",
        "--write-workers",
        "4",
        "--max-reads-per-peer",
        "2",
        "--log-level",
        "debug",
    )
    held = Held()
    calls = []
    try:
        with grpc.insecure_channel(store.address) as channel:
            query = qpb_grpc.QueryServiceStub(channel)
            calls = [query.FetchStream(held.requests(), wait_for_ready=True) for _ in range(2)]
            # Both held calls are in before this host asks for more.
            wait_until(lambda: any("has 2 read calls open" in line for line in store.log))

            def refused() -> bool:
                try:
                    with connect(store.address, timeout=60) as client:
                        client.list_runs()
                except E.ResourceExhaustedError as e:
                    assert "--max-reads-per-peer" in str(e)
                    return True
                return False

            def held_calls_refuse_others() -> bool:
                for call in calls:  # a held call that ended can no longer fill the share
                    assert not call.done(), f"held call ended: {call.code()} {call.details()}"
                return refused()

            wait_until(held_calls_refuse_others)
            for call in calls:
                call.cancel()
            wait_until(lambda: not refused())  # the host's calls ended: it reads again
    finally:
        held.release.set()
        for call in calls:
            call.cancel()
        assert store.stop() == 0, "".join(store.log)


def big_run(path: Path, frames: int = 12) -> None:
    """A closed run of ``frames`` 4 MiB frames (more than flow control lets a client buffer)."""
    config = {"x": WriterGroupConfig(view(lambda s: s), EveryNStep(1))}
    state = np.zeros(1 << 20, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with HDF5StorageWriter(path, config, state, total_steps=frames) as log:
        for step in range(frames):
            log.log(np.full(1 << 20, step, np.float32), step)


def list_runs(address: str) -> list[Any]:
    with connect(address, timeout=60) as client:
        return client.list_runs()


def succeeds(action: Any) -> bool:
    try:
        action()
    except E.ResourceExhaustedError:
        return False
    return True


def idle_ended(error: grpc.RpcError) -> bool:
    return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "idle" in (error.details() or "")


def test_idle_read_calls_are_ended_and_busy_ones_are_not(tmp_path):
    big_run(tmp_path / "data" / "big.h5")
    store = start_store(
        tmp_path / "data",
        "--max-workers",
        "4",
        "--write-workers",
        "3",  # one read thread: a stalled Read holds all reads
        "--idle-stream-seconds",
        "2",
        "--max-message-bytes",
        str(1 << 20),
    )
    held = Held()
    live = None
    try:
        with grpc.insecure_channel(store.address) as channel:
            query = qpb_grpc.QueryServiceStub(channel)
            # A reflection stream and a FetchStream that never send a request.
            # One after the other: the store has one read thread.
            for start in (
                lambda: reflection_call(channel, held, None),
                lambda: query.FetchStream(held.requests(), timeout=120),
            ):
                call = start()
                with pytest.raises(grpc.RpcError) as ended:
                    next(call)
                assert idle_ended(ended.value), ended.value
            # A Read whose client stops consuming holds the one read thread, then is ended.
            stalled = query.Read(read_request("big"))
            next(stalled)  # started: the rest waits on this client
            with pytest.raises(E.ResourceExhaustedError, match="read share"):
                list_runs(store.address)
            wait_until(lambda: succeeds(lambda: list_runs(store.address)))
            with pytest.raises(grpc.RpcError) as ended:
                for _ in stalled:
                    pass
            assert idle_ended(ended.value), ended.value
        # A follower of a quiet live run, still reading, is not idle: it gets the next frame.
        live = open_live_run(store.address, "live", None)
        with connect(store.address, timeout=120) as client, client.open_run("live") as run:
            frames = run.focus_group("group['x']").follow()
            assert int(next(frames)["b"]) == 0
            got: list[int] = []
            waiting = threading.Thread(target=lambda: got.append(int(next(frames)["b"])))
            waiting.start()
            time.sleep(6)  # three idle limits with nothing to send
            live.log(live_state(1), 1)
            live.flush()
            waiting.join(120)
            assert got == [1]
    finally:
        held.release.set()
        if live is not None:
            live.__exit__(None, None, None)
        assert store.stop() == 0, "".join(store.log)

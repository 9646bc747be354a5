"""Hostile input: random bytes and random messages on every RPC, floods, oversized requests.

The store answers each with a typed error, stays up, keeps serving others,
touches nothing outside its data directory and keeps its memory bounded.
"""

from __future__ import annotations

import string
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajstore import errors as E
from trajstore import wire
from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import ingest_pb2_grpc as pb_grpc
from trajstore.v1 import query_pb2 as qpb
from trajstore.v1 import query_pb2_grpc as qpb_grpc

from servers import start_store

UNARY = [
    "/trajstore.v1.IngestService/OpenRun",
    "/trajstore.v1.IngestService/CloseRun",
    "/trajstore.v1.QueryService/ListRuns",
    "/trajstore.v1.QueryService/DescribeRun",
    "/trajstore.v1.QueryService/Fetch",
]
SERVER_STREAMING = ["/trajstore.v1.QueryService/Read", "/trajstore.v1.QueryService/Follow"]
BIDI_STREAMING = ["/trajstore.v1.IngestService/Write", "/trajstore.v1.QueryService/FetchStream"]
#: Codes a well-behaved store answers bad input with (never INTERNAL or UNKNOWN).
TYPED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
fuzz = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    store = start_store(
        root / "data",
        "--max-open-runs",
        "20",
        "--max-message-bytes",
        str(1 << 20),
        "--lease-seconds",
        "3600",
    )
    store.root = root
    with grpc.insecure_channel(store.address) as channel:
        store.channel = channel
        yield store
    assert store.stop() == 0
    outside = sorted(p.name for p in root.iterdir())
    assert outside == ["data"], f"files appeared outside the data dir: {outside}"


def assert_serving(store):
    status = health_pb2_grpc.HealthStub(store.channel).Check(health_pb2.HealthCheckRequest())
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert store.process.poll() is None


def raw(store, method, streaming=False):
    identity = (lambda b: b, lambda b: b)
    if streaming:
        return store.channel.unary_stream(method, *identity)
    return store.channel.unary_unary(method, *identity)


@fuzz
@given(payload=st.binary(max_size=300))
def test_random_bytes_on_every_rpc(hostile_store, payload):
    for method in UNARY:
        try:
            raw(hostile_store, method)(payload, timeout=30)
        except grpc.RpcError as e:
            # Undecodable bytes are refused by gRPC itself before any handler runs.
            assert e.code() in TYPED | {grpc.StatusCode.INTERNAL}, (method, e)
            if e.code() == grpc.StatusCode.INTERNAL:
                assert "deserializ" in (e.details() or "").lower(), (method, e.details())
    for method in SERVER_STREAMING:
        try:
            list(raw(hostile_store, method, streaming=True)(payload, timeout=30))
        except grpc.RpcError as e:
            assert e.code() in TYPED | {grpc.StatusCode.INTERNAL}, (method, e)
            if e.code() == grpc.StatusCode.INTERNAL:
                assert "deserializ" in (e.details() or "").lower(), (method, e.details())
    for method in BIDI_STREAMING:
        call = hostile_store.channel.stream_stream(method, lambda b: b, lambda b: b)
        try:
            list(call(iter([payload, payload]), timeout=30))
        except grpc.RpcError as e:
            assert e.code() in TYPED | {grpc.StatusCode.INTERNAL}, (method, e)
    assert_serving(hostile_store)


names = st.text(alphabet=string.printable + "\x00\u2215\uff0e", max_size=240)
dims = st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5) | st.lists(
    st.integers(0, 8), max_size=3
)
leaves = st.builds(
    pb.LeafSchema,
    path=st.sampled_from(["", "['a']", ".b", "['x/y']", "\x00"]) | names,
    dtype=st.sampled_from(["float32", "int8", "bfloat16", "object", "", "float128"]),
    shape=dims,
)
groups = st.builds(
    pb.GroupSchema,
    name=st.sampled_from(["group", "group['g']", "grp", "group/../x"]) | names,
    time_axis=st.booleans(),
    leaves=st.lists(leaves, max_size=3),
    structure_json=st.sampled_from(["", "{}", '{"t": "leaf"}', "{", "[]", '{"t": "dict"}']),
    compression=st.builds(
        pb.Compression,
        codec=st.integers(0, 9),
        level=st.integers(-5, 30),
        target_chunk_bytes=st.integers(-10, 2**40),
    ),
)
schemas = st.builds(
    pb.RunSchema,
    groups=st.lists(groups, max_size=3),
    metadata_json=st.sampled_from(["", "{}", "[]", "{bad", '{"a": 1}']),
)


@fuzz
@given(run=names, mode=st.integers(0, 6), schema=schemas)
def test_random_open_requests_get_typed_errors(hostile_store, run, mode, schema):
    stub = pb_grpc.IngestServiceStub(hostile_store.channel)
    try:
        opened = stub.OpenRun(pb.OpenRunRequest(run=run, mode=mode, schema=schema), timeout=30)
    except grpc.RpcError as e:
        assert e.code() in TYPED, (e.code(), e.details())
    else:
        stub.CloseRun(pb.CloseRunRequest(session=opened.session), timeout=30)
    assert_serving(hostile_store)


components = (
    st.builds(qpb.IndexComponent, integer=st.integers(-(2**63), 2**63 - 1))
    | st.builds(qpb.IndexComponent, ellipsis=st.booleans())
    | st.builds(
        qpb.IndexComponent,
        slice=st.builds(
            qpb.Slice,
            start=st.integers(-(2**63), 2**63 - 1),
            stop=st.integers(-5, 5),
            step=st.integers(-(2**63), 2**63 - 1),
        ),
    )
)


@fuzz
@given(
    run=st.sampled_from(["target"]) | names,
    group=st.sampled_from(["group['x']", "group"]) | names,
    leaf_ids=st.lists(st.integers(0, 2**32 - 1), max_size=3),
    index=st.lists(components, max_size=4),
    is_tuple=st.booleans(),
    start=st.integers(-(2**63), 2**63 - 1),
)
def test_random_reads_get_typed_errors(hostile_store, run, group, leaf_ids, index, is_tuple, start):
    ensure_target(hostile_store)
    stub = qpb_grpc.QueryServiceStub(hostile_store.channel)
    read = qpb.ReadRequest(
        run=run, group=group, leaves=leaf_ids, index=index, index_is_tuple=is_tuple
    )
    follow = qpb.FollowRequest(run=run, group=group, leaves=leaf_ids, start=start)
    for call, request in ((stub.Read, read), (stub.Follow, follow)):
        try:
            for _ in call(request, timeout=30):
                pass
        except grpc.RpcError as e:
            assert e.code() in TYPED, (e.code(), e.details())
    try:
        stub.Fetch(qpb.FetchRequest(read=read), timeout=30)
    except grpc.RpcError as e:
        assert e.code() in TYPED, (e.code(), e.details())
    try:  # the same read twice on one stream: the first error ends it, typed
        for _ in stub.FetchStream(iter([qpb.FetchStreamRequest(read=read)] * 2), timeout=30):
            pass
    except grpc.RpcError as e:
        assert e.code() in TYPED, (e.code(), e.details())
    assert_serving(hostile_store)


def test_reads_naming_a_leaf_a_million_times_or_a_huge_index_are_refused(hostile_store):
    ensure_target(hostile_store)
    stub = qpb_grpc.QueryServiceStub(hostile_store.channel)
    before = rss_kib(hostile_store.process.pid)
    repeated = qpb.ReadRequest(
        run="target",
        group="group['x']",
        leaves=[0] * 1_000_000,
        index=[qpb.IndexComponent(ellipsis=True)],
    )
    huge_index = qpb.ReadRequest(
        run="target",
        group="group['x']",
        index=[qpb.IndexComponent(integer=0)] * 100_000,
        index_is_tuple=True,
    )
    for read, message, code in (
        (repeated, "at most once", grpc.StatusCode.INVALID_ARGUMENT),
        (huge_index, "at most 64 components", grpc.StatusCode.OUT_OF_RANGE),  # FrameIndexError
    ):
        for call in (
            lambda r: list(stub.Read(r, timeout=60)),
            lambda r: stub.Fetch(qpb.FetchRequest(read=r), timeout=60),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call(read)
            assert info.value.code() == code
            assert message in info.value.details()
    follow = qpb.FollowRequest(run="target", group="group['x']", leaves=[0] * 1_000_000)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Follow(follow, timeout=60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rss_kib(hostile_store.process.pid) - before < 200 * 1024
    assert_serving(hostile_store)


def ensure_target(store):
    """A small closed run named 'target' to aim reads at."""
    if (store.root / "data" / "target.h5").exists():
        return
    spec = RunSpec(groups=(GroupSpec("group['x']", True, (LeafSpec("", "float32", (3,)),)),))
    stub = pb_grpc.IngestServiceStub(store.channel)
    opened = stub.OpenRun(pb.OpenRunRequest(run="target", schema=wire.schema_to_proto(spec)))
    data = np.arange(12, dtype=np.float32).tobytes()
    list(
        stub.Write(
            iter(
                [
                    pb.WriteRequest(session=opened.session),
                    pb.WriteRequest(
                        block=1, start=0, count=4, total_bytes=len(data), data=data, flush=True
                    ),
                ]
            )
        )
    )
    stub.CloseRun(pb.CloseRunRequest(session=opened.session, actual_steps=4))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_ten_thousand_opens_hit_the_open_run_limit_only(hostile_store):
    stub = pb_grpc.IngestServiceStub(hostile_store.channel)
    spec = wire.schema_to_proto(
        RunSpec(groups=(GroupSpec("group", True, (LeafSpec("", "int8", ()),)),))
    )
    before = rss_kib(hostile_store.process.pid)
    opened, refused = [], 0
    for i in range(10_000):
        try:
            opened.append(
                stub.OpenRun(pb.OpenRunRequest(run=f"flood/r{i}", schema=spec), timeout=30).session
            )
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
            assert wire.error_from_rpc(e).__class__ is E.ResourceExhaustedError
            refused += 1
    assert len(opened) <= 20 and refused == 10_000 - len(opened)
    assert rss_kib(hostile_store.process.pid) - before < 200 * 1024
    # Other callers are still served; closing frees the slots.
    qpb_grpc.QueryServiceStub(hostile_store.channel).ListRuns(qpb.ListRunsRequest(), timeout=30)
    for session in opened:
        stub.CloseRun(pb.CloseRunRequest(session=session), timeout=30)
    again = stub.OpenRun(pb.OpenRunRequest(run="flood/after", schema=spec), timeout=30)
    stub.CloseRun(pb.CloseRunRequest(session=again.session), timeout=30)


def test_oversized_messages_are_refused_for_that_caller_only(hostile_store):
    stub = pb_grpc.IngestServiceStub(hostile_store.channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.OpenRun(
            pb.OpenRunRequest(
                run="big", schema=pb.RunSchema(metadata_json='{"x": "' + "a" * (2 << 20) + '"}')
            ),
            timeout=30,
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_serving(hostile_store)


def test_too_many_concurrent_calls_are_refused_for_the_extra_caller_only(tmp_path):
    # One thread for ingest calls, three for reads, all of which one host may use.
    store = start_store(
        tmp_path / "data",
        *("--max-workers", "4", "--write-workers", "1", "--max-reads-per-peer", "3"),
        *("--shutdown-grace", "1"),
    )
    try:
        stub = pb_grpc.IngestServiceStub(grpc.insecure_channel(store.address))
        spec = wire.schema_to_proto(
            RunSpec(groups=(GroupSpec("group", True, (LeafSpec("", "int8", ()),)),))
        )
        session = stub.OpenRun(pb.OpenRunRequest(run="live", schema=spec), timeout=30).session
        frame = pb.WriteRequest(block=1, start=0, count=1, total_bytes=1, data=b"\x07", flush=True)
        acks = stub.Write(iter([pb.WriteRequest(session=session), frame]), timeout=30)
        assert [a.durable_block for a in acks] == [1]
        query = qpb_grpc.QueryServiceStub(grpc.insecure_channel(store.address))
        # Following a run that stays open holds a call slot each; receiving the
        # first frame on each shows that the store is running all three.
        follows = [
            query.Follow(qpb.FollowRequest(run="live", group="group"), timeout=60) for _ in range(3)
        ]
        for follow in follows:
            assert next(follow).data == b"\x07"
        with pytest.raises(grpc.RpcError) as info:
            query.ListRuns(qpb.ListRunsRequest(), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for follow in follows:
            follow.cancel()
        deadline = 60
        while deadline:  # the slots free up as the cancelled calls finish
            try:
                query.ListRuns(qpb.ListRunsRequest(), timeout=30)
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                deadline -= 1
                time.sleep(0.5)
        assert deadline
        stub.CloseRun(pb.CloseRunRequest(session=session), timeout=30)
    finally:
        assert store.stop() == 0

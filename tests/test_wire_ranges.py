"""Every number and description from the wire is range-checked (issue 16, items 8 and 2).

Against a real store: each out-of-range value is refused with its typed error
class, the data dir is left exactly as it was, and the store keeps serving.
What the store accepts it can read back: a structure description nesting
deeper than a run file's reader allows is refused at OpenRun, and a run
file that already holds one is a SchemaError of that run alone. Property
tests: accepted iff representable, with numpy's own size rule as the oracle.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import grpc
import h5py
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajstore import errors as E
from trajstore import wire
from trajstore.bounds import INT64_MAX, MAX_FRAMES, MAX_JSON_DEPTH, MAX_RANK
from trajstore.compression import Compression
from trajstore.schema import SUPPORTED_DTYPES, GroupSpec, LeafSpec, RunSpec, numpy_dtype
from trajstore.store import layout
from trajstore.store.reader import RunFileReader
from trajstore.store.writer import RunFileWriter
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import ingest_pb2_grpc as pb_grpc
from trajstore.v1 import query_pb2 as qpb
from trajstore.v1 import query_pb2_grpc as qpb_grpc

from servers import start_store

MAX_FRAME_BYTES = 1 << 20  # the store's --max-frame-bytes in these tests
RUN_NUMBERS = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = start_store(
        tmp_path_factory.mktemp("ranges") / "data",
        "--lease-seconds",
        "3600",
        "--max-frame-bytes",
        str(MAX_FRAME_BYTES),
    )
    with grpc.insecure_channel(store.address) as channel:
        store.channel = channel
        store.ingest = pb_grpc.IngestServiceStub(channel)
        store.query = qpb_grpc.QueryServiceStub(channel)
        yield store
    assert store.stop() == 0


def snapshot(data_dir: Path) -> dict[str, tuple[int, int]]:
    """Every entry under the data dir with its size and modification time."""
    return {
        p.relative_to(data_dir).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(data_dir.rglob("*"))
    }


def assert_serving(store) -> None:
    status = health_pb2_grpc.HealthStub(store.channel).Check(health_pb2.HealthCheckRequest())
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert store.process.poll() is None
    store.query.ListRuns(qpb.ListRunsRequest(), timeout=30)


def write(store, stream):
    """A Write call; a previous stream of the session still ending is waited for."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return list(store.ingest.Write(iter(stream), timeout=30))
        except grpc.RpcError as e:
            ending = type(wire.error_from_rpc(e)) is E.RunLockedError
            if not ending or "write stream" not in e.details() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def refused(store, call, error_class) -> None:
    """``call()`` fails with exactly ``error_class``, changes nothing, and the store serves on."""
    before = snapshot(store.data_dir)
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = wire.error_from_rpc(info.value)
    assert type(error) is error_class, (type(error), info.value.code(), info.value.details())
    assert snapshot(store.data_dir) == before
    assert_serving(store)


def leaf_schema(shape, dtype="float32", time_axis=True, **group):
    return pb.RunSchema(
        groups=[
            pb.GroupSchema(
                name="group",
                time_axis=time_axis,
                leaves=[pb.LeafSchema(path="", dtype=dtype, shape=list(shape))],
                **group,
            )
        ]
    )


def nested_structure(depth: int) -> dict:
    """A one-leaf structure description whose JSON nests exactly ``depth`` deep."""
    node: dict = {"t": "leaf"} if depth % 2 else {"t": "leaf", "pad": []}
    for _ in range((depth - 1) // 2):
        node = {"t": "tuple", "c": [node]}
    return node


def deep_structure_text(levels: int) -> str:
    """The JSON text of a one-leaf structure nested ``levels`` tuples deep (too deep to dump)."""
    return '{"t": "tuple", "c": [' * levels + '{"t": "leaf"}' + "]}" * levels


# ------------------------------------------------------------------ OpenRun


@pytest.mark.parametrize(
    ("schema", "error_class"),
    [
        # Element counts that overflow int64 though a zero-length axis makes 0 bytes.
        (leaf_schema((0, 2**62, 4), "float64"), E.SchemaError),
        (leaf_schema((0, 2**62, 4), "float64", time_axis=False), E.SchemaError),
        (leaf_schema((2**63 - 1, 0, 2)), E.SchemaError),
        # Empty frames cost nothing: 2**31 of them pass 2**63 - 1 "bytes" (numpy's count).
        (leaf_schema((0, 2**40)), E.SchemaError),
        (leaf_schema((2**40, 0), "float64"), E.SchemaError),
        (leaf_schema((-1, 3)), E.SchemaError),
        (leaf_schema((2**63 - 1,), "int8", time_axis=False), E.ResourceExhaustedError),
        (leaf_schema((1,) * MAX_RANK), E.SchemaError),  # with the time axis: 33 dims
        (
            leaf_schema((3,), compression=pb.Compression(codec=pb.CODEC_GZIP, level=2**31 - 1)),
            E.SchemaError,
        ),
        (
            leaf_schema(
                (3,),
                compression=pb.Compression(
                    codec=pb.CODEC_ZSTD, level=1, target_chunk_bytes=2**63 - 1
                ),
            ),
            E.SchemaError,
        ),
        (
            leaf_schema(
                (3,),
                compression=pb.Compression(codec=pb.CODEC_ZSTD, level=1, target_chunk_bytes=-1),
            ),
            E.SchemaError,
        ),
        (pb.RunSchema(groups=leaf_schema((3,)).groups, total_steps=-1), E.SchemaError),
        # Descriptions nesting deeper than a run file's reader reads back.
        (
            leaf_schema((3,), structure_json=json.dumps(nested_structure(MAX_JSON_DEPTH + 1))),
            E.SchemaError,
        ),
        (leaf_schema((3,), structure_json=deep_structure_text(5000)), E.SchemaError),
        (leaf_schema((3,), frequency_json="[" * 200 + "]" * 200), E.SchemaError),
        (
            pb.RunSchema(
                groups=leaf_schema((3,)).groups,
                config_structure_json="[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
            ),
            E.SchemaError,
        ),
        (
            pb.RunSchema(
                groups=leaf_schema((3,)).groups,
                metadata_json='{"a": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}",
            ),
            E.SchemaError,
        ),
    ],
    ids=lambda value: None if isinstance(value, pb.RunSchema) else value.__name__,
)
def test_out_of_range_schemas_are_refused_at_open_and_nothing_is_created(
    store, schema, error_class
):
    run = f"ranges/refused-{next(RUN_NUMBERS)}"  # one accepted by mistake stays open
    request = pb.OpenRunRequest(run=run, schema=schema)
    refused(store, lambda: store.ingest.OpenRun(request, timeout=30), error_class)
    assert not store.run_file(run).exists()


def test_a_structure_at_the_depth_limit_is_accepted_and_reads_back(store):
    structure = nested_structure(MAX_JSON_DEPTH)
    metadata = {"m": json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))}
    schema = leaf_schema((3,), structure_json=json.dumps(structure))
    schema.metadata_json = json.dumps(metadata)
    opened = store.ingest.OpenRun(pb.OpenRunRequest(run="ranges/deepest", schema=schema))
    store.ingest.CloseRun(pb.CloseRunRequest(session=opened.session, actual_steps=0))
    described = store.query.DescribeRun(qpb.DescribeRunRequest(run="ranges/deepest"))
    assert json.loads(described.schema.groups[0].structure_json) == structure
    assert json.loads(described.info.metadata_json) == metadata
    listed = store.query.ListRuns(qpb.ListRunsRequest(prefix="ranges/deepest")).runs
    assert [r.name for r in listed] == ["ranges/deepest"]


# -------------------------------------------------------------------- Write


@pytest.fixture(scope="module")
def session(store):
    """An open run with two durable frames of one float32 (3,) leaf; block 1 taken."""
    spec = leaf_schema((3,))
    opened = store.ingest.OpenRun(pb.OpenRunRequest(run="ranges/writing", schema=spec))
    data = np.arange(6, dtype="<f4").tobytes()
    first = pb.WriteRequest(
        block=1, start=0, count=2, total_bytes=len(data), data=data, flush=True, actual_steps=2
    )
    acks = list(store.ingest.Write(iter([pb.WriteRequest(session=opened.session), first])))
    assert acks[-1].durable_block == 1
    return opened.session


def frame_block(block=2, **fields):
    data = np.arange(3, dtype="<f4").tobytes()
    values = {"block": block, "start": 2, "count": 1, "total_bytes": len(data), "data": data}
    return pb.WriteRequest(**{**values, **fields})


@pytest.mark.parametrize(
    ("request_", "error_class"),
    [
        (pb.WriteRequest(actual_steps=-1), E.StepOrderError),  # a keepalive with steps
        (pb.WriteRequest(actual_steps=-(2**63)), E.StepOrderError),
        (pb.WriteRequest(flush=True, actual_steps=-7), E.StepOrderError),
        (frame_block(actual_steps=-5), E.StepOrderError),
        (frame_block(block=2**64 - 1), E.InvalidArgumentError),
        (frame_block(group=2**32 - 1), E.FrameMismatchError),
        (frame_block(start=-1), E.FrameMismatchError),
        (frame_block(start=2**63 - 1), E.StepOrderError),
        (frame_block(start=MAX_FRAMES), E.StepOrderError),
        (frame_block(count=2**32 - 1, total_bytes=12 * (2**32 - 1)), E.StepOrderError),
        (frame_block(total_bytes=2**64 - 1), E.FrameMismatchError),
        (frame_block(offset=2**64 - 1), E.InvalidArgumentError),
        (frame_block(offset=12, data=b""), E.InvalidArgumentError),
        # Numbers of a block in a message that has none: never ignored.
        (pb.WriteRequest(group=5), E.InvalidArgumentError),
        (pb.WriteRequest(start=2**63 - 1), E.InvalidArgumentError),
        (pb.WriteRequest(offset=2**64 - 1), E.InvalidArgumentError),
    ],
)
def test_out_of_range_writes_are_refused_and_change_nothing(store, session, request_, error_class):
    stream = [pb.WriteRequest(session=session), request_]
    refused(store, lambda: write(store, stream), error_class)
    info = store.query.DescribeRun(qpb.DescribeRunRequest(run="ranges/writing")).info
    assert [g.frames for g in info.groups] == [2] and info.actual_steps == 2


def test_a_negative_actual_steps_at_close_is_refused_and_the_run_stays_open(store, session):
    request = pb.CloseRunRequest(session=session, actual_steps=-1)
    refused(store, lambda: store.ingest.CloseRun(request, timeout=30), E.StepOrderError)
    # The session is intact: the next block is block 2, then a clean close.
    acks = write(store, [pb.WriteRequest(session=session), frame_block()])
    assert acks[-1].durable_block == 2
    closed = store.ingest.CloseRun(pb.CloseRunRequest(session=session, actual_steps=3))
    assert list(closed.frames) == [3] and closed.actual_steps == 3


# -------------------------------------------------------------------- reads


@pytest.fixture(scope="module")
def closed_run(store):
    opened = store.ingest.OpenRun(pb.OpenRunRequest(run="ranges/closed", schema=leaf_schema((3,))))
    data = np.arange(12, dtype="<f4").tobytes()
    block = pb.WriteRequest(block=1, start=0, count=4, total_bytes=len(data), data=data)
    list(store.ingest.Write(iter([pb.WriteRequest(session=opened.session), block])))
    store.ingest.CloseRun(pb.CloseRunRequest(session=opened.session, actual_steps=4))
    return "ranges/closed"


def integer(value):
    return qpb.IndexComponent(integer=value)


@pytest.mark.parametrize(
    ("leaves", "index", "error_class"),
    [
        ([2**32 - 1], [qpb.IndexComponent(ellipsis=True)], E.InvalidArgumentError),
        ([], [integer(2**63 - 1)], E.FrameIndexError),
        ([], [integer(-(2**63))], E.FrameIndexError),
        ([], [integer(0), integer(2**63 - 1)], E.FrameIndexError),
        ([], [qpb.IndexComponent(slice=qpb.Slice(step=0))], E.InvalidArgumentError),
    ],
)
def test_out_of_range_reads_are_refused(store, closed_run, leaves, index, error_class):
    read = qpb.ReadRequest(
        run=closed_run, group="group", leaves=leaves, index=index, index_is_tuple=True
    )
    refused(store, lambda: list(store.query.Read(read, timeout=30)), error_class)
    refused(store, lambda: store.query.Fetch(qpb.FetchRequest(read=read), timeout=30), error_class)


@pytest.mark.parametrize("start", [-1, -(2**63), MAX_FRAMES + 1, 2**63 - 1])
def test_a_follow_from_outside_any_group_is_refused(store, closed_run, start):
    follow = qpb.FollowRequest(run=closed_run, group="group", start=start)
    refused(store, lambda: list(store.query.Follow(follow, timeout=30)), E.FrameIndexError)


def test_huge_but_valid_slice_bounds_read_like_numpy(store, closed_run):
    index = [qpb.IndexComponent(slice=qpb.Slice(start=-(2**63), stop=2**63 - 1, step=2**63 - 1))]
    read = qpb.ReadRequest(run=closed_run, group="group", index=index, index_is_tuple=True)
    results = store.query.Fetch(qpb.FetchRequest(read=read), timeout=30)
    expected = np.arange(12, dtype="<f4").reshape(4, 3)[-(2**63) : 2**63 - 1 : 2**63 - 1]
    assert list(results.results[0].shape) == list(expected.shape)
    assert np.frombuffer(results.data[0], "<f4").tolist() == expected.ravel().tolist()


# ------------------------------------------------- run files already too deep


def write_run_file(path: Path, *, group_spec_text=None, config_text=None, metadata=None) -> None:
    """A well-formed run file, then its descriptions replaced by hand (as h5py writes them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = RunSpec(groups=(GroupSpec("group", True, (LeafSpec("", "float32", (3,)),)),))
    writer = RunFileWriter(path, spec)
    writer.close()
    with h5py.File(path, "r+") as file:
        if group_spec_text is not None:
            # format 2: the single group "group" is /data
            file["data"].attrs[layout.ATTR_GROUP_SPEC] = group_spec_text
        if config_text is not None:
            file.attrs[layout.ATTR_CONFIG_STRUCTURE] = config_text
        if metadata is not None:
            file.attrs[layout.ATTR_METADATA] = metadata


def group_spec_with(structure_text: str, shape=(3,)) -> str:
    group = GroupSpec("group", True, (LeafSpec("", "float32", (3,)),)).to_json()
    group["structure"] = "@STRUCTURE@"
    group["leaves"][0]["shape"] = list(shape)
    return json.dumps(group).replace('"@STRUCTURE@"', structure_text)


DAMAGED = {
    "deep-structure": {"group_spec_text": group_spec_with(deep_structure_text(5000))},
    "just-too-deep": {
        "group_spec_text": group_spec_with(json.dumps(nested_structure(MAX_JSON_DEPTH + 1)))
    },
    "deep-config": {"config_text": "[" * 5000 + "]" * 5000},
    "deep-metadata": {"metadata": '{"a": ' + "[" * 5000 + "]" * 5000 + "}"},
    "overflowing-shape": {"group_spec_text": group_spec_with('{"t": "leaf"}', (0, 2**62, 4))},
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_a_run_file_holding_too_much_is_a_schema_error_of_that_run_only(store, closed_run, name):
    path = store.data_dir / "damaged" / f"{name}.h5"
    write_run_file(path, **DAMAGED[name])
    with pytest.raises(E.SchemaError):
        RunFileReader(path)
    run = f"damaged/{name}"
    before = snapshot(store.data_dir)
    listed = {r.name: r for r in store.query.ListRuns(qpb.ListRunsRequest(), timeout=30).runs}
    assert closed_run in listed  # the other runs are still listed ...
    assert listed[closed_run].state == qpb.RUN_STATE_CLOSED
    assert listed[run].state == qpb.RUN_STATE_DAMAGED  # ... and this one with its problem
    assert listed[run].problem
    read = qpb.ReadRequest(run=run, group="group", index_is_tuple=True)
    for call in (
        lambda: store.query.DescribeRun(qpb.DescribeRunRequest(run=run), timeout=30),
        lambda: list(store.query.Read(read, timeout=30)),
        lambda: list(store.query.Follow(qpb.FollowRequest(run=run, group="group"), timeout=30)),
    ):
        refused(store, call, E.SchemaError)
    if "group_spec_text" in DAMAGED[name]:  # appending reads the stored group spec back
        append = pb.OpenRunRequest(run=run, mode=pb.OPEN_MODE_APPEND, schema=leaf_schema((3,)))
        content = path.read_bytes()
        with pytest.raises(grpc.RpcError) as info:  # opened to be read: its time changes
            store.ingest.OpenRun(append, timeout=30)
        assert type(wire.error_from_rpc(info.value)) is E.SchemaError, info.value.details()
        assert path.read_bytes() == content
        assert_serving(store)
    else:
        assert snapshot(store.data_dir) == before


# --------------------------------------------------------------- properties


#: Integers around every boundary a dimension can cross.
def around(*edges: int) -> st.SearchStrategy[int]:
    return st.sampled_from(edges).flatmap(lambda e: st.integers(e - 2, e + 2)) | st.integers(-3, 8)


dimension = around(
    0, 2**20, 2**28, 2**29, 2**30, 2**31, 2**32, 2**40, 2**59, 2**60, 2**61, 2**62, 2**63
)
shapes = st.lists(dimension, max_size=4) | st.tuples(st.just(0), dimension, dimension).map(list)


def representable(shape, dtype: str, time_axis: bool) -> bool:
    """numpy's own judgement: can its arrays exist? (0 bytes made).

    A frame, and for an empty leaf (frames cost nothing) all of a time axis's frames.
    """
    if len(shape) + time_axis > MAX_RANK:
        return False
    frames = MAX_FRAMES if time_axis and 0 in shape else 1
    try:
        np.empty((0, frames, *shape), numpy_dtype(dtype))
    except (ValueError, OverflowError):  # negative dimensions, or too big
        return False
    return True


properties = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@properties
@given(shape=shapes, dtype=st.sampled_from(SUPPORTED_DTYPES), time_axis=st.booleans())
def test_a_leaf_shape_is_accepted_iff_numpy_can_represent_it(tmp_path, shape, dtype, time_axis):
    try:
        group = GroupSpec("group", time_axis, (LeafSpec("", dtype, tuple(shape)),))
    except E.SchemaError:
        assert not representable(shape, dtype, time_axis)
        return
    assert representable(shape, dtype, time_axis)
    leaf = group.leaves[0]
    if leaf.frame_nbytes > 1 << 16:
        return  # accepted, too large to write here
    # Accepted, so it is stored and read back: three frames (or the single value).
    count = 3 if time_axis else 1
    frames = (np.arange(count * max(leaf.frame_nbytes, 1)) % 2).astype(np.uint8)
    frames = frames[: count * leaf.frame_nbytes].view(leaf.np_dtype).reshape(count, *leaf.shape)
    path = tmp_path / "prop.h5"
    writer = RunFileWriter(path, RunSpec(groups=(group,)), mode="overwrite")
    writer.write_block(0, 0, count, [frames])
    writer.close()
    reader = RunFileReader(path)
    try:
        n = reader.frames(0)
        index = slice(None) if time_axis else ()
        plan = reader.plan(0, 0, index, n)
        (read,) = reader.read_plans(0, [0], [plan], frames=n)
        expected = frames if time_axis else frames[0]
        assert read.shape == expected.shape and read.tobytes() == expected.tobytes()
    finally:
        reader.close()


@properties
@given(steps=around(0, 2**63) | st.integers(-(2**70), 2**70))
def test_actual_steps_are_accepted_iff_int64_holds_them(tmp_path, steps):
    spec = RunSpec(groups=(GroupSpec("group", True, (LeafSpec("", "int8", ()),)),))
    writer = RunFileWriter(tmp_path / "steps.h5", spec, mode="overwrite")
    try:
        writer.set_actual_steps(steps)
    except E.StepOrderError:
        assert not 0 <= steps <= INT64_MAX
        writer.close()
        return
    assert 0 <= steps <= INT64_MAX
    writer.close()
    reader = RunFileReader(tmp_path / "steps.h5")
    assert reader.actual_steps == steps
    reader.close()


@properties
@given(
    total=around(0, 2**63) | st.none(),
    target=around(1, 2**30, 2**32, 2**63),
    depth=st.integers(1, MAX_JSON_DEPTH + 3),
)
def test_descriptions_and_numbers_are_accepted_iff_they_read_back(tmp_path, total, target, depth):
    structure = nested_structure(depth)
    fits = (total is None or 0 <= total <= INT64_MAX) and 1 <= target <= 2**30
    fits = fits and depth <= MAX_JSON_DEPTH
    try:
        spec = RunSpec(
            groups=(
                GroupSpec(
                    "group",
                    True,
                    (LeafSpec("", "int8", ()),),
                    structure=structure,
                    compression=Compression("zstd", target_chunk_bytes=target),
                ),
            ),
            total_steps=total,
        )
    except (E.SchemaError, ValueError):
        assert not fits
        return
    assert fits
    # Through the wire (as OpenRun decodes it) and through a run file, unchanged.
    assert wire.schema_from_proto(wire.schema_to_proto(spec)) == spec
    RunFileWriter(tmp_path / "described.h5", spec, mode="overwrite").close()
    reader = RunFileReader(tmp_path / "described.h5")
    assert reader.spec == spec
    reader.close()


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(shape=shapes, time_axis=st.booleans())
def test_the_store_opens_a_run_iff_its_shape_is_representable_and_within_limits(
    store, shape, time_axis
):
    if any(not -(2**63) <= d <= INT64_MAX for d in shape):
        return  # protobuf cannot carry it
    fits = representable(shape, "float32", time_axis)
    fits = fits and 4 * math.prod(shape) <= MAX_FRAME_BYTES
    request = pb.OpenRunRequest(
        run="ranges/property",
        mode=pb.OPEN_MODE_OVERWRITE,
        schema=leaf_schema(shape, "float32", time_axis),
    )
    try:
        opened = store.ingest.OpenRun(request, timeout=30)
    except grpc.RpcError as e:
        assert not fits, e.details()
        assert type(wire.error_from_rpc(e)) in (E.SchemaError, E.ResourceExhaustedError)
        return
    assert fits
    store.ingest.CloseRun(pb.CloseRunRequest(session=opened.session, actual_steps=0))
    described = store.query.DescribeRun(qpb.DescribeRunRequest(run="ranges/property"))
    assert list(described.schema.groups[0].leaves[0].shape) == shape

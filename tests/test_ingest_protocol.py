"""The ingest protocol spoken by hand: the server refuses bad input with typed errors."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from trajstore import HDF5StorageReader, wire
from trajstore import errors as E
from trajstore.errors import TrajstoreError
from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import ingest_pb2_grpc as pb_grpc
from trajstore.v1 import query_pb2 as qpb
from trajstore.v1 import query_pb2_grpc as qpb_grpc

from servers import start_store, wait_until

SPEC = RunSpec(
    groups=(
        GroupSpec(
            "group['x']", True, (LeafSpec("['a']", "float32", (3,)), LeafSpec("['b']", "int8", ()))
        ),
        GroupSpec("group['c']", False, (LeafSpec("", "float64", (2,)),)),
    ),
    metadata_json='{"by": "hand"}',
)
FRAME = 3 * 4 + 1


@pytest.fixture
def stub(store):
    with grpc.insecure_channel(store.address) as channel:
        yield pb_grpc.IngestServiceStub(channel)


def call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        raise wire.error_from_rpc(e) from None


def open_run(stub, run="hand", spec=SPEC, mode="create"):
    return call(
        stub.OpenRun,
        pb.OpenRunRequest(run=run, mode=wire.MODES[mode], schema=wire.schema_to_proto(spec)),
    )


def frames_payload(start, count):
    a = np.arange(start, start + count, dtype=np.float32).repeat(3).reshape(count, 3)
    b = np.arange(start, start + count, dtype=np.int8)
    return a.tobytes() + b.tobytes()


def block(n, start, count, *, group=0, data=None, total=None, offset=0, **kw):
    data = frames_payload(start, count) if data is None else data
    return pb.WriteRequest(
        block=n,
        group=group,
        start=start,
        count=count,
        offset=offset,
        total_bytes=len(data) if total is None else total,
        data=data,
        **kw,
    )


def stream(stub, session, *requests):
    """Send requests on one Write stream; return the acks, or raise the typed error."""

    def gen():
        yield pb.WriteRequest(session=session)
        yield from requests

    return [
        (r.durable_block, list(r.durable_frames)) for r in call(lambda: list(stub.Write(gen())))
    ]


def test_blocks_parts_and_acks(stub, store):
    session = open_run(stub).session
    payload = frames_payload(2, 4)
    acks = stream(
        stub,
        session,
        block(1, 0, 2),
        block(2, 2, 4, data=payload[:10], total=len(payload)),  # a block in parts
        block(2, 2, 4, data=payload[10:], total=len(payload), offset=10),
        block(3, 0, 1, group=1, data=np.array([1.5, 2.5]).tobytes()),
        pb.WriteRequest(flush=True, actual_steps=6),
    )
    assert acks[-1] == (3, [6, 1])
    call(stub.CloseRun, pb.CloseRunRequest(session=session, actual_steps=6))
    with HDF5StorageReader(store.run_file("hand")) as reader:
        x = reader.focus_group("group['x']")[:]
        np.testing.assert_array_equal(x["['a']"][:, 0], np.arange(6))  # no structure: by path
        np.testing.assert_array_equal(x["['b']"], np.arange(6))
        np.testing.assert_array_equal(reader.focus_group("group['c']")[...], [1.5, 2.5])
        assert reader.metadata == {"by": "hand"}
        assert reader.actual_steps == 6


BAD_BLOCKS = {
    "byte count (wrong dtype or shape)": (
        block(2, 2, 1, data=b"\0" * (FRAME + 3)),
        E.FrameMismatchError,
    ),
    "declared total": (block(2, 2, 2, total=FRAME), E.FrameMismatchError),
    "unknown group": (block(2, 0, 1, group=7), E.FrameMismatchError),
    "steps backwards": (block(2, 0, 1), E.StepOrderError),
    "block numbers skip": (block(5, 2, 1), E.InvalidArgumentError),
    "once group at index 3": (block(2, 3, 1, group=1, data=b"\0" * 16), E.FrameMismatchError),
    "part out of order": (
        block(2, 2, 2, data=b"\0" * 5, total=2 * FRAME, offset=7),
        E.InvalidArgumentError,
    ),
    "zero frames": (block(2, 2, 0, data=b""), E.FrameMismatchError),
    "frame index past 2**31": (block(2, 2**31, 1, data=frames_payload(2, 1)), E.StepOrderError),
}


@pytest.mark.parametrize("case", BAD_BLOCKS, ids=list(BAD_BLOCKS))
def test_bad_blocks_get_typed_errors_and_the_run_keeps_what_was_acknowledged(stub, store, case):
    bad, error = BAD_BLOCKS[case]
    session = open_run(stub).session
    assert stream(stub, session, block(1, 0, 2), pb.WriteRequest(flush=True))[-1] == (1, [2, 0])
    with pytest.raises(error):
        stream(stub, session, bad)
    call(stub.CloseRun, pb.CloseRunRequest(session=session, actual_steps=2))
    with HDF5StorageReader(store.run_file("hand")) as reader:
        x = reader.focus_group("group['x']")
        assert len(x) == 2
        np.testing.assert_array_equal(x[:]["['b']"], [0, 1])


def test_unknown_session_and_mixed_sessions(stub):
    with pytest.raises(E.FailedPreconditionError):
        stream(stub, "no-such-session", block(1, 0, 1))
    session = open_run(stub).session
    with pytest.raises(E.InvalidArgumentError):
        stream(stub, session, block(1, 0, 1, session="another"))
    with pytest.raises(E.FailedPreconditionError):
        call(stub.CloseRun, pb.CloseRunRequest(session="nope"))


def test_a_second_write_stream_of_a_session_is_refused_typed(stub):
    session = open_run(stub).session
    release = threading.Event()

    def held_open():
        yield pb.WriteRequest(session=session)
        release.wait(60)

    first = stub.Write(held_open())
    try:
        wait_until(lambda: _refused_second_stream(stub, session))
    finally:
        release.set()
        list(first)
    call(stub.CloseRun, pb.CloseRunRequest(session=session))


def _refused_second_stream(stub, session):
    """Whether a second stream is refused with RunLockedError (False: the first is not up yet)."""
    try:
        stream(stub, session)
    except E.RunLockedError as e:
        assert "already has a write stream" in str(e)
        return True
    return False


def spec_with(**changes) -> pb.RunSchema:
    message = wire.schema_to_proto(SPEC)
    for path, value in changes.items():
        target = message
        *parents, last = path.split("__")
        for part in parents:
            target = (
                target.groups[int(part[1:])]
                if part.startswith("g")
                else (target.leaves[int(part[1:])])
            )
        if isinstance(value, list):
            del getattr(target, last)[:]
            getattr(target, last).extend(value)
        else:
            setattr(target, last, value)
    return message


BAD_SCHEMAS = {
    "unknown dtype": (dict(g0__l0__dtype="object"), E.SchemaError),
    "negative dimension": (dict(g0__l0__shape=[-1]), E.SchemaError),
    # Not a limit: no store can hold it (numpy's sizes are int64).
    "overflowing shape": (dict(g0__l0__shape=[2**62, 2**62, 8]), E.SchemaError),
    "frame over the limit": (dict(g0__l0__shape=[1 << 31, 4]), E.ResourceExhaustedError),
    "too many dimensions": (dict(g0__l0__shape=[1] * 40), E.SchemaError),
    "slash in a group name": (dict(g0__name="group/../x"), E.SchemaError),
    "not a group name": (dict(g0__name="data"), E.SchemaError),
    "NUL in a leaf path": (dict(g0__l0__path="['a\x00']"), E.SchemaError),
    "duplicate groups": (dict(g1__name="group['x']"), E.SchemaError),
    "bad structure JSON": (dict(g0__structure_json="{not json"), E.SchemaError),
    "metadata not an object": (dict(metadata_json="[1, 2]"), E.SchemaError),
}


@pytest.mark.parametrize("case", BAD_SCHEMAS, ids=list(BAD_SCHEMAS))
def test_bad_schemas_are_refused_before_anything_is_created(stub, store, case):
    changes, error = BAD_SCHEMAS[case]
    with pytest.raises(error):
        call(stub.OpenRun, pb.OpenRunRequest(run="s", schema=spec_with(**changes)))
    assert not store.run_file("s").exists()


def test_empty_schema_and_unknown_mode(stub):
    with pytest.raises(E.SchemaError):
        call(stub.OpenRun, pb.OpenRunRequest(run="e", schema=pb.RunSchema()))
    with pytest.raises(E.InvalidArgumentError):
        call(stub.OpenRun, pb.OpenRunRequest(run="e", mode=42, schema=wire.schema_to_proto(SPEC)))


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, trailing):
        self._code, self._details, self._trailing = code, details, trailing

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


@pytest.mark.parametrize(
    "name", [n for n in E.__all__ if isinstance(getattr(E, n), type) and not n.endswith("Warning")]
)
def test_every_error_class_survives_the_status_mapping(name):
    cls = getattr(E, name)
    error = cls("message")
    rpc = FakeRpcError(wire.status_code(error), "message", ((wire.ERROR_CLASS_KEY, name),))
    back = wire.error_from_rpc(rpc)
    assert type(back) is cls
    assert str(back) == "message"


def test_a_forged_class_name_falls_back_to_the_status_code():
    rpc = FakeRpcError(grpc.StatusCode.NOT_FOUND, "x", ((wire.ERROR_CLASS_KEY, "SystemExit"),))
    assert type(wire.error_from_rpc(rpc)) is E.NotFoundError
    rpc = FakeRpcError(grpc.StatusCode.NOT_FOUND, "x", ((wire.ERROR_CLASS_KEY, "RunExistsError"),))
    assert type(wire.error_from_rpc(rpc)) is E.NotFoundError  # class must match the code
    rpc = FakeRpcError(grpc.StatusCode.DATA_LOSS, "x", ())
    assert type(wire.error_from_rpc(rpc)) is TrajstoreError


def test_structure_must_match_the_leaves(stub):
    bad = spec_with(g0__structure_json='{"t": "leaf"}')  # one leaf; the group has two
    with pytest.raises(E.SchemaError, match="disagree"):
        call(stub.OpenRun, pb.OpenRunRequest(run="s", schema=bad))
    with pytest.raises(E.SchemaError, match="malformed"):
        call(
            stub.OpenRun,
            pb.OpenRunRequest(
                run="s", schema=spec_with(g0__structure_json='{"t": "dict", "k": ["a"], "c": []}')
            ),
        )


def test_data_without_a_block_number_is_refused(stub):
    session = open_run(stub).session
    with pytest.raises(E.InvalidArgumentError, match="block number"):
        stream(stub, session, block(0, 0, 1))


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_rewinding_first_block_leaves_the_store_idle_until_it_is_durable(tmp_path):
    # A resend after a reconnect lowers the frames readers see before any block
    # of the new session is durable; the acknowledging loop must wait, not spin.
    store = start_store(tmp_path / "data", "--flush-interval", "60", "--flush-bytes", "1000000000")
    try:
        with grpc.insecure_channel(store.address) as channel:
            stub = pb_grpc.IngestServiceStub(channel)
            query = qpb_grpc.QueryServiceStub(channel)
            first = open_run(stub).session
            stream(stub, first, block(1, 0, 4), pb.WriteRequest(flush=True))
            call(stub.CloseRun, pb.CloseRunRequest(session=first, actual_steps=4))
            session = open_run(stub, mode="append").session
            idle_done = threading.Event()

            def requests():
                yield pb.WriteRequest(session=session)
                yield block(1, 2, 1)  # rewrites frame 2: the run shows 2 frames until durable
                idle_done.wait(60)
                yield pb.WriteRequest(flush=True)

            acks = stub.Write(requests())

            def visible():
                info = query.DescribeRun(qpb.DescribeRunRequest(run="hand")).info
                return info.groups[0].frames

            wait_until(lambda: visible() == 2)
            before = cpu_seconds(store.process.pid)
            time.sleep(2.0)  # the store has nothing to do meanwhile
            used = cpu_seconds(store.process.pid) - before
            idle_done.set()
            assert [(a.durable_block, list(a.durable_frames)) for a in acks] == [(1, [3, 0])]
            assert used < 0.5, f"the store used {used:.2f} s of CPU in 2 s with nothing to do"
            call(stub.CloseRun, pb.CloseRunRequest(session=session, actual_steps=3))
    finally:
        assert store.stop() == 0

"""The fast paths of the wire agree with the generated protobuf classes, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from trajstore.blockcodec import (
    OutgoingArrays,
    OutgoingPart,
    arrays_decoder,
    decode_write_request,
    decoder,
    encode_message,
    split_views,
)
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import query_pb2 as qpb

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
headers = st.builds(
    pb.WriteRequest,
    session=st.text(max_size=40),
    block=u64,
    group=u32,
    start=i64,
    count=u32,
    total_bytes=u64,
    offset=u64,
    actual_steps=i64,
    flush=st.booleans(),
)
buffers = st.lists(st.binary(max_size=300).map(lambda b: np.frombuffer(b, np.uint8)), max_size=6)


@settings(max_examples=200)
@given(header=headers, arrays=buffers, part_bytes=st.integers(1, 400))
def test_parts_encode_like_the_generated_class(header, arrays, part_bytes):
    payload = b"".join(a.tobytes() for a in arrays)
    offsets = []
    joined = b""
    for offset, views in split_views(arrays, part_bytes):
        data = b"".join(views)
        assert len(data) <= part_bytes
        assert offset == len(joined)
        joined += data
        offsets.append(offset)
        expected = pb.WriteRequest()
        expected.CopyFrom(header)
        expected.data = data
        encoded = encode_message(OutgoingPart(header, views))
        assert pb.WriteRequest.FromString(encoded) == expected
        assert encoded == expected.SerializeToString()
    assert joined == payload
    assert len(offsets) == max(1, -(-len(payload) // part_bytes))


def test_views_are_not_copies():
    frames = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.int64)]
    ((_, views),) = split_views(frames, 1 << 20)
    frames[0][0, 0] = 42
    assert np.frombuffer(views[0], np.float32)[0] == 42
    assert b"".join(views) == frames[0].tobytes() + frames[1].tobytes()


def as_protobuf(incoming):
    message = pb.WriteRequest()
    message.CopyFrom(incoming.fields)
    message.data = bytes(incoming.data)
    return message


@settings(max_examples=200)
@given(header=headers, data=st.binary(max_size=500))
def test_decoding_gives_what_protobuf_parses(header, data):
    message = pb.WriteRequest()
    message.CopyFrom(header)
    message.data = data
    encoded = message.SerializeToString()
    incoming = decode_write_request(encoded)
    assert not incoming.fields.data
    assert as_protobuf(incoming) == message


@settings(max_examples=500)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        # valid messages with garbage spliced in or cut short
        st.tuples(headers, st.binary(max_size=50), st.integers(0, 300)).map(
            lambda t: (t[0].SerializeToString() + t[1])[: t[2]]
        ),
    )
)
def test_any_bytes_decode_exactly_as_protobuf_would(raw):
    try:
        expected = pb.WriteRequest.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            decode_write_request(raw)
        return
    assert as_protobuf(decode_write_request(raw)) == expected


def test_a_repeated_data_field_keeps_protobufs_last_one_wins():
    raw = (
        pb.WriteRequest(block=3, data=b"first").SerializeToString()
        + pb.WriteRequest(data=b"second").SerializeToString()
    )
    incoming = decode_write_request(raw)
    assert bytes(incoming.data) == b"second" and incoming.fields.block == 3


follow_headers = st.builds(
    qpb.FollowResponse,
    start=i64,
    count=u32,
    leaf=u32,
    offset=u64,
    total_bytes=u64,  # a field after data
)
read_headers = st.builds(qpb.ReadResponse, leaf=u32, offset=u64)


@settings(max_examples=100)
@given(header=st.one_of(follow_headers, read_headers), data=st.binary(max_size=300))
def test_read_and_follow_parts_round_trip_like_protobuf(header, data):
    expected = type(header)()
    expected.CopyFrom(header)
    expected.data = data
    views = [memoryview(data[:7]), memoryview(data[7:])]
    encoded = encode_message(OutgoingPart(header, views))
    assert encoded == expected.SerializeToString()
    incoming = decoder(type(header))(encoded)
    assert bytes(incoming.data) == data
    incoming.fields.data = data
    assert incoming.fields == expected


fetch_headers = st.builds(
    lambda kind, results: kind(results=results),
    st.sampled_from([qpb.FetchResponse, qpb.FetchStreamResponse]),
    st.lists(
        st.builds(
            qpb.LeafResult,
            shape=st.lists(st.integers(0, 2**40), max_size=4),
            scalar=st.booleans(),
        ),
        max_size=4,
    ),
)


@settings(max_examples=200)
@given(header=fetch_headers, entries=st.lists(st.binary(max_size=300), max_size=4))
def test_fetch_results_round_trip_like_protobuf(header, entries):
    expected = type(header)()
    expected.CopyFrom(header)
    expected.data.extend(entries)  # empty entries too: a repeated field keeps them
    encoded = encode_message(OutgoingArrays(header, [memoryview(e) for e in entries]))
    assert encoded == expected.SerializeToString()
    incoming = arrays_decoder(type(header))(encoded)
    assert [bytes(d) for d in incoming.data] == entries
    assert all(isinstance(d, memoryview) and d.obj is encoded for d in incoming.data)
    assert incoming.fields == header


@settings(max_examples=500)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.tuples(fetch_headers, st.lists(st.binary(max_size=20), max_size=3)).map(
            lambda t: encode_message(OutgoingArrays(t[0], [memoryview(e) for e in t[1]]))
        ),
        # valid messages with garbage spliced in or cut short
        st.tuples(fetch_headers, st.binary(max_size=50), st.integers(0, 300)).map(
            lambda t: (t[0].SerializeToString() + t[1])[: t[2]]
        ),
    )
)
def test_any_bytes_decode_as_fetch_results_exactly_as_protobuf_would(raw):
    try:
        expected = qpb.FetchResponse.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            arrays_decoder(qpb.FetchResponse)(raw)
        return
    incoming = arrays_decoder(qpb.FetchResponse)(raw)
    assert not incoming.fields.data
    assert [bytes(d) for d in incoming.data] == list(expected.data)
    expected.ClearField("data")
    assert incoming.fields == expected

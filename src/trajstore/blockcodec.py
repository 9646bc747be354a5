"""The hot paths of the wire: block and read parts without extra copies.

A block's payload is every leaf's frames, concatenated. Built the obvious
way it is copied four times on the client (stacked per leaf, joined into a
part, copied into a protobuf message, serialised) -- about 2 ms per 4 MiB
block, a third of the client's CPU on the MD benchmark. Here the payload is
kept as views of the frames the writer already copied to the host, and the
serialiser writes them straight into the message bytes: one copy.

The bytes on the wire are exactly ``WriteRequest.SerializeToString()`` of
the same message (a property test checks this against the generated class):
the other fields are serialised by protobuf itself, and the ``data`` field
(number 8) goes between them in protobuf's length-delimited encoding.

On the store, :func:`decode_write_request` likewise hands the payload on as
a view of the received message instead of two copies (protobuf's parse and
its ``bytes`` attribute), leaving every other field to protobuf's parser.
Reads go the other way with the same two pieces: the store sends views of
what it read from HDF5 (:func:`encode_message`), the client assembles
results from views of the received messages (:func:`query_method`).
One-frame reads (Fetch, FetchStream) carry one ``data`` entry per leaf, a
repeated field: :class:`OutgoingArrays` and :func:`arrays_decoder` do the
same for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message

from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import query_pb2 as qpb

__all__ = [
    "IncomingArrays",
    "IncomingPart",
    "OutgoingArrays",
    "OutgoingPart",
    "arrays_decoder",
    "byte_view",
    "decode_write_request",
    "decoder",
    "encode_message",
    "query_method",
    "split_views",
    "write_method",
]

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class OutgoingPart:
    """A message whose ``data`` field is the concatenation of ``views``."""

    header: Message  # every field but data
    views: Sequence[memoryview]


@dataclass(frozen=True)
class IncomingPart(Generic[M]):
    """A received message: its ``data`` a view of the received bytes."""

    fields: M  # every field but data
    data: memoryview


@dataclass(frozen=True)
class OutgoingArrays:
    """A message whose repeated ``data`` field holds one entry per view."""

    header: Message  # every field but data
    views: Sequence[memoryview]


@dataclass(frozen=True)
class IncomingArrays(Generic[M]):
    """A received message: each entry of its repeated ``data`` a view of the received bytes."""

    fields: M  # every field but data
    data: list[memoryview]


def byte_view(array: np.ndarray) -> memoryview:
    """The bytes of ``array`` in C order: a view where it is contiguous, else a copy's."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)


def split_views(
    buffers: Sequence[np.ndarray], part_bytes: int
) -> Iterator[tuple[int, list[memoryview]]]:
    """Split the concatenation of ``buffers`` into parts of at most ``part_bytes``.

    Yields ``(offset, views)``: zero-copy views whose concatenation is the
    part. An empty payload is one empty part.
    """
    views = [v for v in map(byte_view, buffers) if len(v)]
    if not views:
        yield 0, []
        return
    offset = 0
    pieces: list[memoryview] = []
    size = 0
    for view in views:
        position = 0
        while position < len(view):
            take = min(part_bytes - size, len(view) - position)
            pieces.append(view[position : position + take])
            size += take
            position += take
            if size == part_bytes:
                yield offset, pieces
                offset += size
                pieces, size = [], 0
    if size:
        yield offset, pieces


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_message(message: Message | OutgoingPart | OutgoingArrays) -> bytes:
    """Serialise a message, copying the data of a part or of arrays only once."""
    if isinstance(message, OutgoingArrays):
        return _encode(message.header, [[view] for view in message.views])
    if not isinstance(message, OutgoingPart):
        return message.SerializeToString()
    if not any(len(v) for v in message.views):
        return message.header.SerializeToString()
    return _encode(message.header, [message.views])


def _encode(header: Message, entries: Sequence[Sequence[memoryview]]) -> bytes:
    """``header`` with a ``data`` entry per item of ``entries``, each its views concatenated."""
    number = header.DESCRIPTOR.fields_by_name["data"].number
    # Fields in number order, as protobuf writes them: those before data, data, the rest.
    fields = header.ListFields()
    if all(field.number < number for field, _ in fields):
        before, after = header, None  # the common case: nothing to split
    else:
        before, after = type(header)(), type(header)()
        for field, value in fields:
            target = before if field.number < number else after
            if field.number != number:
                target.MergeFrom(type(header)(**{field.name: value}))
    key = _varint((number << 3) | 2)  # length-delimited
    pieces: list[bytes | memoryview] = [before.SerializeToString()]
    for views in entries:
        pieces += [key, _varint(sum(len(v) for v in views)), *views]
    if after is not None:
        pieces.append(after.SerializeToString())
    return b"".join(pieces)


def decoder(message_class: type[M]) -> Callable[[bytes], IncomingPart[M]]:
    """A deserializer for ``message_class`` that leaves its ``data`` field uncopied.

    The top-level fields are scanned; every field but ``data`` is handed to
    protobuf's own parser, which validates them. Anything the scan does not
    take (groups, a malformed or repeated field) is left to protobuf entirely,
    so the outcome -- the fields, or a ``DecodeError`` -- is always protobuf's.
    """
    number = message_class.DESCRIPTOR.fields_by_name["data"].number

    def decode(message: bytes) -> IncomingPart[M]:
        view = memoryview(message)
        found = _find_fields(view, number)
        if found is None or len(found) > 1:  # a repeated data field: protobuf's rules apply
            parsed = message_class.FromString(message)
            data = memoryview(parsed.data)  # type: ignore[attr-defined]
            parsed.ClearField("data")
            return IncomingPart(parsed, data)
        if not found:
            return IncomingPart(message_class.FromString(message), memoryview(b""))
        return IncomingPart(message_class.FromString(_without(view, found)), _views(view, found)[0])

    return decode


def arrays_decoder(message_class: type[M]) -> Callable[[bytes], IncomingArrays[M]]:
    """As :func:`decoder`, for a message whose ``data`` field is repeated."""
    number = message_class.DESCRIPTOR.fields_by_name["data"].number

    def decode(message: bytes) -> IncomingArrays[M]:
        view = memoryview(message)
        found = _find_fields(view, number)
        if found is None:
            parsed = message_class.FromString(message)
            data = [memoryview(entry) for entry in parsed.data]  # type: ignore[attr-defined]
            parsed.ClearField("data")
            return IncomingArrays(parsed, data)
        return IncomingArrays(message_class.FromString(_without(view, found)), _views(view, found))

    return decode


#: Where one field's entry lies in a message: (start of its key, start of its bytes, end).
_Span = tuple[int, int, int]


def _views(view: memoryview, found: Sequence[_Span]) -> list[memoryview]:
    return [view[start:stop] for _, start, stop in found]


def _without(view: memoryview, found: Sequence[_Span]) -> bytes:
    """The message without the entries ``found``: the fields for protobuf to parse."""
    kept, position = [], 0
    for key, _, stop in found:
        kept.append(view[position:key])
        position = stop
    kept.append(view[position:])
    return b"".join(kept)


#: IngestService.Write's requests, as the store receives them.
decode_write_request = decoder(pb.WriteRequest)


def _find_fields(view: memoryview, number: int) -> list[_Span] | None:
    """Where the entries of field ``number`` lie, in order; ``None``: malformed, ask protobuf."""
    position, end = 0, len(view)
    found: list[_Span] = []
    while position < end:
        field_start = position
        key, position = _read_varint(view, position)
        if key is None:
            return None
        kind = key & 7
        if kind == 0:
            value, position = _read_varint(view, position)
            if value is None:
                return None
        elif kind == 1:
            position += 8
        elif kind == 5:
            position += 4
        elif kind == 2:
            length, position = _read_varint(view, position)
            if length is None or position + length > end:
                return None
            if key >> 3 == number:
                found.append((field_start, position, position + length))
            position += length
        else:
            return None  # groups and invalid wire types
    return found if position == end else None


def _read_varint(view: memoryview, position: int) -> tuple[int | None, int]:
    """The varint at ``position`` and the position after it (``None``: malformed)."""
    value, shift = 0, 0
    for index in range(position, min(position + 10, len(view))):
        byte = view[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    return None, position


def write_method(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable:
    """IngestService.Write on ``channel``, sending with :func:`encode_message`."""
    method = pb.DESCRIPTOR.services_by_name["IngestService"].methods_by_name["Write"]
    return channel.stream_stream(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=encode_message,
        response_deserializer=pb.WriteResponse.FromString,
    )


_QUERY_METHODS: dict[str, tuple[type[Message], Callable[[bytes], Any]]] = {
    "Read": (qpb.ReadRequest, decoder(qpb.ReadResponse)),
    "Follow": (qpb.FollowRequest, decoder(qpb.FollowResponse)),
    "Fetch": (qpb.FetchRequest, arrays_decoder(qpb.FetchResponse)),
    "FetchStream": (qpb.FetchStreamRequest, arrays_decoder(qpb.FetchStreamResponse)),
}


def query_method(channel: grpc.Channel, name: str) -> Any:
    """QueryService method ``name`` on ``channel``, its responses' data left as views.

    Read and Follow answer :class:`IncomingPart`, Fetch and FetchStream
    :class:`IncomingArrays`.
    """
    request, decode = _QUERY_METHODS[name]
    method = qpb.DESCRIPTOR.services_by_name["QueryService"].methods_by_name[name]
    make = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    return make(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=request.SerializeToString,
        response_deserializer=decode,
    )

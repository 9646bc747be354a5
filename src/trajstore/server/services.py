"""Registering the ingest and query services, with the zero-copy codecs on the hot RPCs.

Like the generated ``add_*Servicer_to_server`` functions, built from the
service descriptors, except that Write requests are decoded and the
responses of Read, Follow, Fetch and FetchStream encoded by
:mod:`trajstore.blockcodec` (the same bytes on the wire, fewer copies in
this process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

from trajstore.blockcodec import decode_write_request, encode_message
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import query_pb2 as qpb

__all__ = ["add_services"]

#: Per method: (request deserializer, response serializer) replacing protobuf's.
_CODECS: dict[str, tuple[Callable[[bytes], Any] | None, Callable[[Any], bytes] | None]] = {
    "trajstore.v1.IngestService.Write": (decode_write_request, None),
    "trajstore.v1.QueryService.Read": (None, encode_message),
    "trajstore.v1.QueryService.Follow": (None, encode_message),
    "trajstore.v1.QueryService.Fetch": (None, encode_message),
    "trajstore.v1.QueryService.FetchStream": (None, encode_message),
}


def add_services(server: grpc.Server, ingest: Any, query: Any) -> None:
    """Register ``ingest`` (IngestService) and ``query`` (QueryService) on ``server``."""
    for service, servicer in (
        (pb.DESCRIPTOR.services_by_name["IngestService"], ingest),
        (qpb.DESCRIPTOR.services_by_name["QueryService"], query),
    ):
        handlers = _handlers(service, servicer)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),)
        )
        server.add_registered_method_handlers(service.full_name, handlers)


def _handlers(service: ServiceDescriptor, servicer: Any) -> dict[str, grpc.RpcMethodHandler]:
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        decode, encode = _CODECS.get(method.full_name, (None, None))
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=decode or request.FromString,
            response_serializer=encode or response.SerializeToString,
        )
    return handlers

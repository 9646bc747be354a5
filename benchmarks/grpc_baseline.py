"""The limit of the wire: a bare gRPC byte stream on loopback, no trajstore in it.

``python -m benchmarks.grpc_baseline serve`` prints its port and sinks bytes;
:func:`push` streams ``total`` bytes to it in ``message`` sized messages.
"""

from __future__ import annotations

import sys
import time
from concurrent import futures

import grpc

METHOD = "/bench.Sink/Push"
OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


def _sink(requests, context):  # type: ignore[no-untyped-def]
    total = 0
    for message in requests:
        total += len(message)
    return str(total).encode()


def serve() -> None:
    """Run the sink until killed."""
    server = grpc.server(futures.ThreadPoolExecutor(4), options=OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "bench.Sink", {"Push": grpc.stream_unary_rpc_method_handler(_sink)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def push(address: str, total: int, message: int) -> float:
    """Seconds to stream ``total`` bytes in messages of ``message`` bytes."""
    payload = b"\0" * message
    count = max(total // message, 1)
    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        call = channel.stream_unary(METHOD, lambda b: b, lambda b: b)
        started = time.perf_counter()
        received = int(call(iter([payload] * count)))
        seconds = time.perf_counter() - started
    if received != count * message:
        raise RuntimeError("the sink lost bytes")
    return seconds


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()

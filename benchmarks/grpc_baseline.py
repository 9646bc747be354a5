"""The limits of the wire: bare gRPC calls on loopback, no trajstore in them.

``python -m benchmarks.grpc_baseline serve`` prints its port and serves three
methods whose handlers do nothing but move bytes: :func:`push` streams bytes
to it (the limit of ingest), :func:`pull` streams bytes from it in large
messages (the limit of a whole-dataset read), :func:`round_trip` asks for
one small reply at a time in unary calls and :func:`stream_round_trip` on
one open stream (the limits of a one-frame read).
"""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np

SERVICE = "bench.Bytes"
OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


def _identity(data: bytes) -> bytes:
    return data


def _sizes(request: bytes) -> tuple[int, int]:
    """``total`` and ``message`` sizes asked for, as ``b"total message"``."""
    total, message = (int(x) for x in request.split())
    return total, message


def _push(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    return str(sum(len(message) for message in requests)).encode()


def _pull(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    total, message = _sizes(request)
    payload = b"\0" * message
    for _ in range(max(total // message, 1)):
        yield payload


def _reply(request: bytes, context: grpc.ServicerContext) -> bytes:
    return bytes(int(request))


def _replies(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for request in requests:
        yield bytes(int(request))


def serve() -> None:
    """Run the server until killed."""
    server = grpc.server(futures.ThreadPoolExecutor(4), options=OPTIONS)
    codec = {"request_deserializer": _identity, "response_serializer": _identity}
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Push": grpc.stream_unary_rpc_method_handler(_push, **codec),
            "Pull": grpc.unary_stream_rpc_method_handler(_pull, **codec),
            "Reply": grpc.unary_unary_rpc_method_handler(_reply, **codec),
            "Replies": grpc.stream_stream_rpc_method_handler(_replies, **codec),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def push(address: str, total: int, message: int) -> float:
    """Seconds to stream ``total`` bytes to the server in ``message`` sized messages."""
    payload = b"\0" * message
    count = max(total // message, 1)
    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        call = channel.stream_unary(f"/{SERVICE}/Push", _identity, _identity)
        started = time.perf_counter()
        received = int(call(iter([payload] * count)))
        seconds = time.perf_counter() - started
    if received != count * message:
        raise RuntimeError("the server lost bytes")
    return seconds


def pull(address: str, total: int, message: int, repeats: int = 5) -> float:
    """Median seconds to receive ``total`` bytes from the server in ``message`` sized messages."""
    times = []
    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        call = channel.unary_stream(f"/{SERVICE}/Pull", _identity, _identity)
        for _ in range(repeats):
            started = time.perf_counter()
            received = sum(len(m) for m in call(f"{total} {message}".encode()))
            times.append(time.perf_counter() - started)
            if received != max(total // message, 1) * message:
                raise RuntimeError("the server lost bytes")
    return float(np.median(times))


def round_trip(address: str, size: int, samples: int) -> float:
    """Median seconds of a unary call whose reply is ``size`` bytes."""
    times = []
    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        call = channel.unary_unary(f"/{SERVICE}/Reply", _identity, _identity)
        for _ in range(10):
            call(str(size).encode())  # connect, warm up
        for _ in range(samples):
            started = time.perf_counter()
            call(str(size).encode())
            times.append(time.perf_counter() - started)
    return float(np.median(times))


def stream_round_trip(address: str, size: int, samples: int) -> float:
    """Median seconds from sending a request on an open stream to its ``size`` byte reply."""
    times = []
    requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    with grpc.insecure_channel(address, options=OPTIONS) as channel:
        call = channel.stream_stream(f"/{SERVICE}/Replies", _identity, _identity)
        replies = call(iter(requests.get, None))
        for _ in range(10):  # connect, warm up
            requests.put(str(size).encode())
            next(replies)
        for _ in range(samples):
            started = time.perf_counter()
            requests.put(str(size).encode())
            next(replies)
            times.append(time.perf_counter() - started)
        requests.put(None)
        replies.cancel()
    return float(np.median(times))


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()

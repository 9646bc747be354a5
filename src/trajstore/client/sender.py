"""The remote writer's background half: frames to blocks, blocks to the wire, acks back.

The contract mirrors :class:`~trajstore.store.background.BackgroundWriter`:
:meth:`BlockSender.put_frame` takes host arrays and returns at once unless
more than ``max_pending_bytes`` are logged but not yet acknowledged as
durable (then it blocks; nothing is dropped); :meth:`BlockSender.flush`
returns once everything put so far is acknowledged; an error (from the
server or the connection) is raised by the next ``put_frame``, ``flush`` or
``close``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from trajstore import wire
from trajstore.errors import NotOpenError, TrajstoreError, UnavailableError
from trajstore.schema import RunSpec
from trajstore.store import layout
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import ingest_pb2_grpc as pb_grpc

__all__ = ["BlockSender"]

#: A block aims at this many bytes (fewer when a group's batch is smaller).
BLOCK_TARGET_BYTES = 4 << 20


@dataclass
class _Frame:
    group: int
    index: int
    leaves: Sequence[np.ndarray]
    nbytes: int


@dataclass
class _FlushMarker:
    done: threading.Event = field(default_factory=threading.Event)
    target: int = -1  # block to wait for; set by the encoder


@dataclass
class _Pending:
    start: int = 0
    frames: list[Sequence[np.ndarray]] = field(default_factory=list)
    nbytes: int = 0
    since: float = 0.0


_END = object()


class BlockSender:
    """Streams one run's frames to the store over one Write stream.

    Args:
        stub: Ingest service stub.
        session: Session id from OpenRun.
        spec: The run's schema.
        part_bytes: Largest data part per message (the server's limit).
        metadata: Call metadata (credentials).
        max_pending_bytes: Bound on bytes logged but not yet acknowledged.
        send_interval: A partly filled block is sent after this many seconds.
    """

    def __init__(
        self,
        stub: pb_grpc.IngestServiceStub,
        session: str,
        spec: RunSpec,
        *,
        part_bytes: int,
        metadata: tuple[tuple[str, str], ...] = (),
        max_pending_bytes: int = 64 << 20,
        send_interval: float = 0.1,
    ) -> None:
        self.session = session
        self.spec = spec
        self.part_bytes = max(part_bytes, 1)
        self.max_pending_bytes = max_pending_bytes
        self.send_interval = send_interval
        self.actual_steps = 0
        self._batch = [
            max(1, min(layout.batch_frames(g), BLOCK_TARGET_BYTES // max(g.frame_nbytes, 1)))
            for g in spec.groups
        ]
        self._cond = threading.Condition()
        self._inbox: deque[_Frame | _FlushMarker | object] = deque()
        self._pending = [_Pending() for _ in spec.groups]
        self._pending_bytes = 0
        self._unacked: deque[tuple[int, int]] = deque()  # (block, nbytes)
        self._markers: list[_FlushMarker] = []
        self._acked = 0
        self._next_block = 1
        self._error: TrajstoreError | None = None
        self._closed = False
        self._requests: queue.Queue[pb.WriteRequest | object] = queue.Queue()
        self._responses = stub.Write(self._request_stream(), metadata=metadata)
        self._encoder = threading.Thread(
            target=self._encode_loop, name="trajstore-encode", daemon=True
        )
        self._receiver = threading.Thread(
            target=self._receive_loop, name="trajstore-acks", daemon=True
        )
        self._encoder.start()
        self._receiver.start()

    # ---------------------------------------------------------------- callers

    @property
    def pending_bytes(self) -> int:
        """Bytes logged and not yet acknowledged as durable."""
        return self._pending_bytes

    def raise_if_failed(self) -> None:
        """Raise the error that stopped the stream, if any."""
        if self._error is not None:
            raise self._error

    def put_frame(self, group: int, index: int, leaves: Sequence[np.ndarray]) -> None:
        """Queue one frame; blocks while the bound on unacknowledged bytes is reached."""
        nbytes = sum(leaf.nbytes for leaf in leaves)
        with self._cond:
            self._check_open()
            while (
                self._pending_bytes
                and self._pending_bytes + nbytes > self.max_pending_bytes
                and self._error is None
            ):
                self._cond.wait()
            self.raise_if_failed()
            self._pending_bytes += nbytes
            self._inbox.append(_Frame(group, index, leaves, nbytes))
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything put so far is durable on the store."""
        marker = _FlushMarker()
        with self._cond:
            self._check_open()
            self._inbox.append(marker)
            self._cond.notify_all()
        done = marker.done.wait(timeout)
        self.raise_if_failed()
        return done

    def close(self) -> None:
        """Flush, end the stream and stop the threads; raise any error."""
        if self._closed:
            return
        try:
            if self._error is None:
                self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._inbox.append(_END)
                self._cond.notify_all()
            self._encoder.join()
            self._receiver.join()
        self.raise_if_failed()

    def cancel(self) -> None:
        """Abandon the stream at once (the writer is failing anyway)."""
        self._responses.cancel()
        with self._cond:
            self._closed = True
            self._inbox.append(_END)
            self._cond.notify_all()

    def _check_open(self) -> None:
        self.raise_if_failed()
        if self._closed:
            raise NotOpenError("the remote writer is closed")

    # ------------------------------------------------------- encoder thread

    def _request_stream(self) -> Iterator[pb.WriteRequest]:
        yield pb.WriteRequest(session=self.session)
        while True:
            request = self._requests.get()
            if request is _END:
                return
            yield request  # type: ignore[misc]

    def _encode_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._inbox:
                        wait = self._next_send_due()
                        if wait is not None and wait <= 0:
                            break
                        self._cond.wait(wait)
                    items = list(self._inbox)
                    self._inbox.clear()
                for item in items:
                    if item is _END:
                        self._requests.put(_END)
                        return
                    if isinstance(item, _FlushMarker):
                        self._seal_all()
                        item.target = self._next_block - 1
                        self._requests.put(
                            pb.WriteRequest(flush=True, actual_steps=self.actual_steps)
                        )
                        self._complete_markers(item)
                    elif isinstance(item, _Frame):
                        self._add(item)
                due = self._next_send_due()
                if due is not None and due <= 0:
                    self._seal_all(only_due=True)
        except Exception as e:  # encoding must never die silently
            self._fail(TrajstoreError(f"encoding frames failed: {e!r}"))
            self._requests.put(_END)

    def _next_send_due(self) -> float | None:
        oldest = [p.since for p in self._pending if p.frames]
        if not oldest:
            return None
        return min(oldest) + self.send_interval - time.monotonic()

    def _add(self, frame: _Frame) -> None:
        pending = self._pending[frame.group]
        if pending.frames and frame.index != pending.start + len(pending.frames):
            self._seal(frame.group)
            pending = self._pending[frame.group]
        if not pending.frames:
            pending.start = frame.index
            pending.since = time.monotonic()
        pending.frames.append(frame.leaves)
        pending.nbytes += frame.nbytes
        end = pending.start + len(pending.frames)
        if len(pending.frames) >= self._batch[frame.group] or end % self._batch[frame.group] == 0:
            self._seal(frame.group)

    def _seal_all(self, *, only_due: bool = False) -> None:
        now = time.monotonic()
        for group, pending in enumerate(self._pending):
            if pending.frames and (not only_due or now - pending.since >= self.send_interval):
                self._seal(group)

    def _seal(self, group: int) -> None:
        pending = self._pending[group]
        count = len(pending.frames)
        if count == 1:
            buffers = [np.ascontiguousarray(leaf) for leaf in pending.frames[0]]
        else:
            buffers = [np.stack(column) for column in zip(*pending.frames, strict=True)]
        block = self._next_block
        self._next_block += 1
        with self._cond:
            self._unacked.append((block, pending.nbytes))
        total = sum(b.nbytes for b in buffers)
        for offset, data in _parts(buffers, self.part_bytes):
            self._requests.put(
                pb.WriteRequest(
                    block=block,
                    group=group,
                    start=pending.start,
                    count=count,
                    total_bytes=total,
                    offset=offset,
                    data=data,
                    actual_steps=self.actual_steps,
                )
            )
        self._pending[group] = _Pending()

    # ------------------------------------------------------ receiver thread

    def _receive_loop(self) -> None:
        try:
            for response in self._responses:
                self._on_ack(int(response.durable_block))
            if not self._closed:
                self._fail(UnavailableError("the store ended the write stream"))
        except grpc.RpcError as e:
            if not (self._closed and e.code() == grpc.StatusCode.CANCELLED):
                self._fail(wire.error_from_rpc(e))
        finally:
            with self._cond:
                for marker in self._markers:
                    marker.done.set()
                self._cond.notify_all()

    def _on_ack(self, block: int) -> None:
        with self._cond:
            self._acked = max(self._acked, block)
            while self._unacked and self._unacked[0][0] <= self._acked:
                self._pending_bytes -= self._unacked.popleft()[1]
            self._complete_markers()
            self._cond.notify_all()

    def _complete_markers(self, new: _FlushMarker | None = None) -> None:
        with self._cond:
            if new is not None:
                self._markers.append(new)
            waiting = []
            for marker in self._markers:
                if 0 <= marker.target <= self._acked:
                    marker.done.set()
                else:
                    waiting.append(marker)
            self._markers = waiting

    def _fail(self, error: TrajstoreError) -> None:
        with self._cond:
            if self._error is None:
                self._error = error
            for marker in self._markers:
                marker.done.set()
            self._markers = []
            self._cond.notify_all()


def _parts(buffers: Sequence[np.ndarray], part_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Split the concatenation of ``buffers`` into ``(offset, bytes)`` parts."""
    views = [memoryview(b.reshape(-1).view(np.uint8).data) for b in buffers if b.nbytes]
    total = sum(len(v) for v in views)
    if total == 0:
        yield 0, b""
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
                yield offset, b"".join(pieces)
                offset += size
                pieces, size = [], 0
    if size:
        yield offset, b"".join(pieces)

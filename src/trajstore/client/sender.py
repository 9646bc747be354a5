"""The remote writer's background half: frames to blocks, blocks to the wire, acks back.

The contract mirrors :class:`~trajstore.store.background.BackgroundWriter`:
:meth:`BlockSender.put_frame` takes host arrays and returns at once unless
more than ``max_pending_bytes`` are logged but not yet acknowledged as
durable (then it blocks; nothing is dropped); :meth:`BlockSender.flush`
returns once everything put so far is acknowledged; an error (from the
server, or a store unreachable for longer than ``reconnect_timeout``) is
raised by the next ``put_frame``, ``flush`` or ``close``.

Every block stays in memory until the store acknowledges it. When the
stream breaks (the store restarts, the network drops), the sender reopens
the run in ``append`` mode — taking over its own previous session if the
store still holds it — and resends every unacknowledged block, in order,
with backoff between attempts. Block writes are idempotent by time index,
so a block that was durable but not yet acknowledged is simply written again:
the run ends with every frame exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from trajstore import wire
from trajstore.errors import NotOpenError, TrajstoreError, UnavailableError
from trajstore.schema import RunSpec
from trajstore.store import layout
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import ingest_pb2_grpc as pb_grpc

__all__ = ["BlockSender", "Session"]

log = logging.getLogger("trajstore.client")

#: A block aims at this many bytes (fewer when a group's batch is smaller).
BLOCK_TARGET_BYTES = 4 << 20


@dataclass(frozen=True)
class Session:
    """A writer session on the store, as OpenRun granted it."""

    id: str
    part_bytes: int
    lease_seconds: float
    frames: tuple[int, ...] = ()  # frames durable per group when it was opened


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


@dataclass
class _Block:
    """An encoded block, kept until the store acknowledges it."""

    number: int  # the sender's own numbering, 1, 2, ... across sessions
    group: int
    start: int
    count: int
    total_bytes: int
    parts: list[tuple[int, bytes]]
    nbytes: int  # logged bytes it accounts for
    actual_steps: int


class _StreamBrokeError(Exception):
    """The write stream ended or failed in a way worth reconnecting for."""


_RETRIABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
_END = object()


class BlockSender:
    """Streams one run's frames to the store, reconnecting when the stream breaks.

    Args:
        stub: Ingest service stub.
        session: The session from OpenRun.
        spec: The run's schema.
        reopen: Opens the run again in ``append`` mode, taking over the given
            session id; returns the new session (raises on failure).
        metadata: Call metadata (credentials).
        max_pending_bytes: Bound on bytes logged but not yet acknowledged.
        send_interval: A partly filled block is sent after this many seconds.
        reconnect_timeout: Give up (and fail) after the store has been
            unreachable this long.
    """

    def __init__(
        self,
        stub: pb_grpc.IngestServiceStub,
        session: Session,
        spec: RunSpec,
        *,
        reopen: Callable[[str], Session],
        metadata: tuple[tuple[str, str], ...] = (),
        max_pending_bytes: int = 64 << 20,
        send_interval: float = 0.1,
        reconnect_timeout: float = 300.0,
    ) -> None:
        self.spec = spec
        self.max_pending_bytes = max_pending_bytes
        self.send_interval = send_interval
        self.reconnect_timeout = reconnect_timeout
        self.actual_steps = 0
        #: Times the stream broke and was re-established.
        self.reconnects = 0
        self._stub = stub
        self._reopen = reopen
        self._metadata = metadata
        self._session = session
        self._batch = [
            max(1, min(layout.batch_frames(g), BLOCK_TARGET_BYTES // max(g.frame_nbytes, 1)))
            for g in spec.groups
        ]
        self._cond = threading.Condition()
        self._inbox: deque[_Frame | _FlushMarker | object] = deque()
        self._pending = [_Pending() for _ in spec.groups]
        self._pending_bytes = 0
        self._blocks: deque[_Block] = deque()  # sealed, not yet acknowledged
        self._markers: list[_FlushMarker] = []
        self._flush_wanted = 0  # flushes requested by the encoder
        self._acked = 0
        self._next_block = 1
        self._error: TrajstoreError | None = None
        self._ending = False
        self._closed = False
        self._stream: grpc.Future | None = None
        self._encoder = threading.Thread(
            target=self._encode_loop, name="trajstore-encode", daemon=True
        )
        self._receiver = threading.Thread(
            target=self._stream_loop, name="trajstore-stream", daemon=True
        )
        self._encoder.start()
        self._receiver.start()

    # ---------------------------------------------------------------- callers

    @property
    def session(self) -> str:
        """The current session id."""
        return self._session.id

    @property
    def pending_bytes(self) -> int:
        """Bytes logged and not yet acknowledged as durable."""
        return self._pending_bytes

    def raise_if_failed(self) -> None:
        """Raise the error that stopped the sender, if any."""
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
        with self._cond:
            self._closed = True
            self._ending = True
            self._inbox.append(_END)
            self._cond.notify_all()
            stream = self._stream
        if stream is not None:
            stream.cancel()

    def _check_open(self) -> None:
        self.raise_if_failed()
        if self._closed:
            raise NotOpenError("the remote writer is closed")

    # ------------------------------------------------------- encoder thread

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
                        with self._cond:
                            self._ending = True
                            self._cond.notify_all()
                        return
                    if isinstance(item, _FlushMarker):
                        self._seal_all()
                        with self._cond:
                            item.target = self._next_block - 1
                            self._flush_wanted += 1
                            self._markers.append(item)
                            self._complete_markers()
                            self._cond.notify_all()
                    elif isinstance(item, _Frame):
                        self._add(item)
                due = self._next_send_due()
                if due is not None and due <= 0:
                    self._seal_all(only_due=True)
        except Exception as e:  # encoding must never die silently
            self._fail(TrajstoreError(f"encoding frames failed: {e!r}"))

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
        self._pending[group] = _Pending()
        count = len(pending.frames)
        if count == 1:
            buffers = [np.ascontiguousarray(leaf) for leaf in pending.frames[0]]
        else:
            buffers = [np.stack(column) for column in zip(*pending.frames, strict=True)]
        parts = list(wire.split_parts(buffers, self._session.part_bytes))
        with self._cond:
            block = _Block(
                number=self._next_block,
                group=group,
                start=pending.start,
                count=count,
                total_bytes=sum(b.nbytes for b in buffers),
                parts=parts,
                nbytes=pending.nbytes,
                actual_steps=self.actual_steps,
            )
            self._next_block += 1
            self._blocks.append(block)
            self._cond.notify_all()

    # ------------------------------------------- stream and receiver thread

    def _requests(
        self, session: Session, first_block: int, sent: list[int]
    ) -> Iterator[pb.WriteRequest]:
        """What one Write stream sends: unacknowledged blocks from ``first_block`` on.

        The stream numbers the blocks it sends 1, 2, ...; ``sent[i]`` records
        which of ours went as number ``i + 1``.
        """
        yield pb.WriteRequest(session=session.id)
        cursor = first_block
        # A new stream after a reconnect repeats the latest flush request, so
        # that flushes waiting on resent blocks complete.
        flushes_sent = 0
        keepalive = max(session.lease_seconds / 4, 0.05)
        last_sent = time.monotonic()
        while True:
            with self._cond:
                while True:
                    block = self._block_at(cursor)
                    wanted = self._flush_wanted
                    if block is not None or (self._ending and cursor >= self._next_block):
                        break
                    if wanted > flushes_sent:
                        break
                    remaining = last_sent + keepalive - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                ending = self._ending and cursor >= self._next_block and block is None
            if block is not None:
                sent.append(block.number)
                for offset, data in block.parts:
                    yield pb.WriteRequest(
                        block=len(sent),
                        group=block.group,
                        start=block.start,
                        count=block.count,
                        total_bytes=block.total_bytes,
                        offset=offset,
                        data=data,
                        actual_steps=block.actual_steps,
                    )
                cursor += 1
            elif wanted > flushes_sent:
                flushes_sent = wanted
                yield pb.WriteRequest(flush=True, actual_steps=self.actual_steps)
            elif ending:
                return
            else:
                yield pb.WriteRequest()  # keepalive: renews the lease
            last_sent = time.monotonic()

    def _block_at(self, number: int) -> _Block | None:
        if not self._blocks:
            return None
        position = number - self._blocks[0].number  # blocks are numbered consecutively
        return self._blocks[position] if 0 <= position < len(self._blocks) else None

    def _stream_loop(self) -> None:
        first_block = 1
        while True:
            try:
                self._run_stream(first_block)
                return  # the stream ended because we closed it
            except _StreamBrokeError as broke:
                if self._closed and self._ending and not self._blocks:
                    return
                log.warning("write stream broke (%s); reconnecting", broke)
            except TrajstoreError as e:
                self._fail(e)
                return
            try:
                self._reconnect()
            except TrajstoreError as e:
                self._fail(e)
                return
            with self._cond:
                first_block = self._blocks[0].number if self._blocks else self._next_block

    def _run_stream(self, first_block: int) -> None:
        session = self._session
        sent: list[int] = []
        responses = self._stub.Write(
            self._requests(session, first_block, sent), metadata=self._metadata
        )
        with self._cond:
            self._stream = responses
        try:
            for response in responses:
                acked = int(response.durable_block)
                if 0 < acked <= len(sent):
                    self._on_ack(sent[acked - 1])
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code in _RETRIABLE and not (self._closed and code == grpc.StatusCode.CANCELLED):
                raise _StreamBrokeError(code.name if code else "unknown") from None
            if self._closed and code == grpc.StatusCode.CANCELLED:
                return
            raise wire.error_from_rpc(e) from None
        with self._cond:
            finished = self._ending and not self._blocks
        if not finished:
            raise _StreamBrokeError("the store ended the write stream")

    def _reconnect(self) -> None:
        old = self._session.id
        try:
            for attempt in Retrying(
                wait=wait_exponential(multiplier=0.1, max=5.0),
                stop=stop_after_delay(self.reconnect_timeout),
                retry=retry_if_exception_type(UnavailableError),
                reraise=False,
            ):
                with attempt:
                    if self._closed and self._error is not None:
                        raise self._error
                    session = self._reopen(old)
        except RetryError:
            raise UnavailableError(
                f"the store stayed unreachable for {self.reconnect_timeout:.0f}s; "
                f"frames not yet acknowledged were not stored"
            ) from None
        with self._cond:
            self._session = session
            self.reconnects += 1
            self._cond.notify_all()
        log.warning("reconnected: resending unacknowledged blocks", extra={"session": session.id})

    def _on_ack(self, block: int) -> None:
        with self._cond:
            self._acked = max(self._acked, block)
            self._release()

    def _release(self) -> None:
        """Drop blocks the store holds durably (in order); wake whoever waits. Lock held."""
        while self._blocks and self._blocks[0].number <= self._acked:
            self._pending_bytes -= self._blocks.popleft().nbytes
        self._complete_markers()
        self._cond.notify_all()

    def _complete_markers(self) -> None:
        """Complete flushes whose blocks are all durable. Lock held."""
        first_pending = self._blocks[0].number if self._blocks else self._next_block
        waiting = []
        for marker in self._markers:
            if 0 <= marker.target < first_pending:
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
            self._ending = True
            self._cond.notify_all()

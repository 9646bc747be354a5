"""The background writer: frames in, batched block writes and flushes out.

The contract, which the local writer and the storage server both rely on:

- :meth:`BackgroundWriter.submit_frame` and :meth:`~BackgroundWriter.submit_block`
  take ownership of host arrays and return at once, unless more than
  ``max_pending_bytes`` are waiting to be written; then they block until
  there is room. Nothing is ever dropped.
- Frames of each group are buffered and written as one block per
  ``layout.batch_frames(group)`` frames (whole chunks); partial blocks are
  written on :meth:`~BackgroundWriter.flush`, on close, after
  ``flush_interval`` seconds, or when a blocked caller needs the room.
- :meth:`~BackgroundWriter.flush` returns once everything submitted before it
  is written and flushed to disk.
- A block that is written on its own (not merged with others) has its
  chunks' compression started on the file's chunk pool, if it has one, when
  it is submitted: the pool works ahead of the writing thread. The
  compressed chunks wait with their blocks, so queued data may take up to
  twice ``max_pending_bytes`` (less by the compression ratio).
- Flushes that come due (``flush_interval``, ``flush_bytes``) do not stop the
  writing: the writing thread hands the data to the OS, a second thread
  ``fsync``s it, the writing thread then publishes the frame counts, and the
  second thread ``fsync``s those and calls ``on_flush``. One such flush is in
  flight at a time.
- An error on the background thread is raised by the next ``submit_*``,
  ``flush`` or ``close``; after it the writer accepts nothing more. The file
  then closes with every frame written counted — unless a write, flush or
  ``fsync`` itself failed: then with the counts of the last flush that
  completed, since frames written since may not be on disk.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from trajstore.checks import check_positive
from trajstore.errors import GroupNotFoundError, NotOpenError, TrajstoreError, WriterFailedError
from trajstore.store import layout
from trajstore.store.writer import FlushTicket, PreparedBlock, RunFileWriter

__all__ = ["DEFAULT_MAX_PENDING_BYTES", "BackgroundWriter"]

#: Default bound on bytes submitted but not yet written.
DEFAULT_MAX_PENDING_BYTES = 64 << 20

#: While frames keep coming, the writing thread looks for them this often
#: (seconds) rather than being woken for each step: a wake-up per step cost
#: the logging thread more than its own work (the GIL changes hands twice;
#: issue #18). Frames are buffered for block writes anyway, and a flush, a
#: caller waiting for room or a full batch still wakes the thread at once.
FRAME_POLL_SECONDS = 0.01

#: ... or once this many items or bytes are queued.
FRAME_WAKE_ITEMS = 1024
FRAME_WAKE_BYTES = 1 << 20


@dataclass
class _Block:
    group: int
    start: int
    count: int
    leaves: Sequence[np.ndarray]
    nbytes: int
    tag: int | None = None
    prepared: PreparedBlock | None = None  # its compression, started when submitted


@dataclass
class _Frames:
    """The frames of one step, ``(group, index, leaves)`` each, leaves without a time axis."""

    frames: Sequence[tuple[int, int, Sequence[np.ndarray]]]
    nbytes: int


@dataclass
class _Flush:
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _InFlight:
    """A flush whose ``fsync`` runs on the sync thread."""

    ticket: FlushTicket
    tag: int | None
    started: float
    #: "data": its data awaits fsync; "publish": the writing thread writes the
    #: counts next; "counts": the counts await fsync, then ``on_flush``.
    stage: str = "data"


@dataclass
class _Buffer:
    """Consecutive blocks of one group waiting to become one block write."""

    start: int = 0
    count: int = 0
    blocks: list[Sequence[np.ndarray]] = field(default_factory=list)
    nbytes: int = 0
    #: Whether ``blocks`` are single frames (leaves without a time axis).
    frames: bool = False

    @property
    def stop(self) -> int:
        return self.start + self.count

    def add(self, leaves: Sequence[np.ndarray], count: int, nbytes: int, batch: int) -> bool:
        """Append ``count`` frames; whether the buffer now ends a batch (write it)."""
        self.blocks.append(leaves)
        self.count += count
        self.nbytes += nbytes
        return self.count >= batch or self.start // batch != self.stop // batch


def _no_group(group: object) -> GroupNotFoundError:
    return GroupNotFoundError(f"the run file has no group at position {group!r}")


def _shorter(timeout: float | None, poll: float) -> float:
    return poll if timeout is None else min(timeout, poll)


class BackgroundWriter:
    """Writes frames to a :class:`RunFileWriter` on a background thread.

    Args:
        file: The run file to write; the writer closes it on :meth:`close`.
        max_pending_bytes: Bound on bytes submitted but not yet written.
        flush_interval: If set, data is made durable at most this many seconds
            after it was submitted, even without a :meth:`flush`.
        flush_bytes: If set, data is also made durable as soon as this many
            bytes were written since the last flush (acknowledgements then keep
            pace with a fast writer whose unacknowledged window is bounded).
        on_flush: Called on the background thread after every flush with the
            frames now durable per group and the tag of the last block
            submitted before the flush (the server acknowledges with these).
        on_error: Called on the background thread when writing fails (the
            server ends the writer's stream with it at once).
    """

    def __init__(
        self,
        file: RunFileWriter,
        *,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        flush_interval: float | None = None,
        flush_bytes: int | None = None,
        on_flush: Callable[[list[int], int | None], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        check_positive("max_pending_bytes", max_pending_bytes, integer=True)
        check_positive("flush_interval", flush_interval, optional=True)
        check_positive("flush_bytes", flush_bytes, integer=True, optional=True)
        self.file = file
        self.max_pending_bytes = max_pending_bytes
        self.flush_interval = flush_interval
        self.flush_bytes = flush_bytes
        self._on_flush = on_flush
        self._on_error = on_error
        self._batch = [layout.batch_frames(g) for g in file.spec.groups]
        #: Bytes of one frame, per group position (a dict: a position the
        #: file lacks, negative ones included, is missing rather than wrapped).
        self._frame_nbytes = {i: g.frame_nbytes for i, g in enumerate(file.spec.groups)}
        self._buffers = [_Buffer() for _ in file.spec.groups]
        self._queue: deque[_Block | _Frames | _Flush | None] = deque()
        self._queued_bytes = 0  # in the queue, submitted since the thread last took it
        self._queued_at = 0.0  # when the queue last went from empty to not
        self._polling = False  # the thread looks for frames every FRAME_POLL_SECONDS
        self._busy = False  # the thread works on items it took: it looks for more when done
        self._cond = threading.Condition()
        self._pending_bytes = 0
        self._waiting = 0
        self._error: BaseException | None = None
        self._closed = False
        self._unflushed_since: float | None = None
        self._unflushed_bytes = 0
        self._durable = list(file.frames)
        self._last_tag: int | None = None
        self._in_flight: _InFlight | None = None
        self._syncs: deque[_InFlight | None] = deque()
        #: Seconds the last flush of the file took.
        self.last_flush_seconds = 0.0
        self._syncer = threading.Thread(target=self._sync_loop, name="trajstore-sync", daemon=True)
        self._thread = threading.Thread(target=self._run, name="trajstore-writer", daemon=True)
        self._syncer.start()
        self._thread.start()

    # ---------------------------------------------------------------- callers

    @property
    def durable_frames(self) -> list[int]:
        """Frames per group that the last flush made durable."""
        return list(self._durable)

    @property
    def failed(self) -> bool:
        """Whether writing failed (the error is raised by the next call)."""
        return self._error is not None

    @property
    def pending_bytes(self) -> int:
        """Bytes submitted and not yet written."""
        return self._pending_bytes

    def submit_frame(self, group: int, index: int, leaves: Sequence[np.ndarray]) -> None:
        """Queue one frame (one array per leaf, without a time axis)."""
        self.submit_frames([(group, index, leaves)])

    def submit_frames(self, frames: Sequence[tuple[int, int, Sequence[np.ndarray]]]) -> None:
        """Queue the frames of one step, ``(group, index, leaves)`` each, in one go.

        One lock round trip for them all; they wait for room together (a step
        larger than the bound still goes through alone).

        Raises:
            GroupNotFoundError: A frame names a group the file lacks (nothing
                is queued).
        """
        # One item for the step; its frames keep their tuples of arrays, which the
        # garbage collector stops tracking at its first pass, so thousands of
        # buffered frames do not make its full passes -- which walk every object
        # of the process -- more frequent (item 24). Sizes come from the schema.
        sizes = self._frame_nbytes
        try:
            nbytes = sum([sizes[group] for group, _, _ in frames])
        except KeyError as e:
            raise _no_group(e.args[0]) from None
        item = _Frames(frames, nbytes)
        with self._cond:
            queue = self._queue
            # The common case, while steps keep coming: room, and the writing
            # thread busy (it takes the queue when done) or polling with nothing
            # to wake it for. Otherwise the full path below.
            if (
                self._error is None
                and not self._closed
                and self._pending_bytes + nbytes <= self.max_pending_bytes
                and (
                    self._busy
                    or (
                        self._polling
                        and len(queue) < FRAME_WAKE_ITEMS - 1
                        and self._queued_bytes + nbytes < FRAME_WAKE_BYTES
                    )
                )
            ):
                if not queue:
                    self._queued_at = time.monotonic()
                self._pending_bytes += nbytes
                self._queued_bytes += nbytes
                queue.append(item)
                return
        self._put(item, lazy=True)

    def submit_block(
        self,
        group: int,
        start: int,
        count: int,
        leaves: Sequence[np.ndarray],
        *,
        tag: int | None = None,
    ) -> None:
        """Queue ``count`` frames from ``start``, one stacked array per leaf.

        ``tag`` (e.g. a block number) is reported to ``on_flush`` once the
        block is durable.
        """
        if group not in self._frame_nbytes:
            raise _no_group(group)
        block = _Block(group, start, count, leaves, sum(a.nbytes for a in leaves), tag)
        if self._written_alone(group, count) and self._error is None and not self._closed:
            block.prepared = self.file.prepare_block(group, start, count, leaves)
        self._put(block)

    def set_actual_steps(self, actual_steps: int) -> None:
        """Record the steps run so far; written with the next flush."""
        self.file.set_actual_steps(actual_steps)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is durable.

        Returns:
            ``False`` if ``timeout`` passed first, else ``True``.
        """
        marker = _Flush()
        self._put(marker)
        done = marker.done.wait(timeout)
        self.raise_if_failed()
        return done

    def close(self) -> None:
        """Flush, stop the thread and close the file; raise a background error."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._queue.append(None)
            self._cond.notify_all()
        self._thread.join()
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """Raise the background error, if one happened."""
        error = self._error
        if error is None:
            return
        if isinstance(error, TrajstoreError):
            raise error
        raise WriterFailedError(f"background writer failed: {error!r}") from error

    def _put(self, *items: _Block | _Frames | _Flush, lazy: bool = False) -> None:
        """Queue ``items``; with ``lazy``, wake the writing thread only if it does not poll."""
        nbytes = sum([item.nbytes for item in items if not isinstance(item, _Flush)])
        with self._cond:
            self.raise_if_failed()
            if self._closed:
                raise NotOpenError("the writer is closed")
            if nbytes:
                self._waiting += 1
                try:
                    # A frame larger than the bound still goes through alone.
                    while (
                        self._pending_bytes
                        and self._pending_bytes + nbytes > self.max_pending_bytes
                        and self._error is None
                    ):
                        self._cond.notify_all()
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self.raise_if_failed()
                if self._closed:  # closed while this caller waited for room
                    raise NotOpenError("the writer was closed")
                self._pending_bytes += nbytes
            if not self._queue:
                self._queued_at = time.monotonic()
            self._queue.extend(items)
            self._queued_bytes += nbytes
            if lazy and (
                self._busy
                or (
                    self._polling
                    and len(self._queue) < FRAME_WAKE_ITEMS
                    and self._queued_bytes < FRAME_WAKE_BYTES
                )
            ):
                return  # the writing thread takes them when done, or within FRAME_POLL_SECONDS
            self._cond.notify_all()

    # ------------------------------------------------------ background thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # never end silently: the next call raises it
            self._fail(e)
            with self._cond:  # flushes still queued complete (and raise)
                for item in self._queue:
                    if isinstance(item, _Flush):
                        item.done.set()
                self._queue.clear()
        self._guarded(self._write_all)
        self._guarded(self._flush_now)
        with self._cond:
            self._syncs.append(None)
            self._cond.notify_all()
        self._syncer.join()
        try:
            if self.file.io_failed:  # counts stay as last published: frames since may be lost
                self.file.abort()
            else:  # also after a refused block: what was written is on disk, counted
                self.file.close()
        except Exception as e:
            self._fail(e)

    def _loop(self) -> None:
        """Take queued items until the end marker; write, buffer and flush them."""
        stopping = False
        while not stopping:
            with self._cond:
                while not self._queue and not self._publish_due():
                    if self._waiting and self._has_buffered():
                        break  # a caller needs room: write partial blocks
                    timeout = self._flush_due_in()
                    if timeout is not None and timeout <= 0:
                        break
                    self._busy = False
                    if not self._polling:
                        self._cond.wait(timeout)
                    elif not self._cond.wait(_shorter(timeout, FRAME_POLL_SECONDS)):
                        # Nothing came for a whole poll: be woken by the next frame.
                        self._polling = bool(self._queue)
                self._busy = True
                items = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                # Frames keep coming: look for the next ones rather than be woken.
                self._polling = any(isinstance(item, _Block | _Frames) for item in items)
                if self._polling and self._unflushed_since is None:
                    self._unflushed_since = self._queued_at  # flush_interval counts from then
            self._guarded(self._advance_flush)
            for item in items:
                if item is None:
                    stopping = True
                    continue
                self._guarded(self._process, item)
                self._guarded(self._advance_flush)
                if self._over_flush_bytes():
                    self._guarded(self._start_flush)
            if self._waiting and not self._queue:
                self._guarded(self._write_all)
            if self._flush_due_in() == 0.0:
                self._guarded(self._start_flush)

    # ------------------------------------------------- flushes, two threads

    def _publish_due(self) -> bool:
        # Never after a failure: nothing more is published, and the writing
        # thread must wait rather than spin on a flush it will not finish.
        return (
            self._error is None
            and self._in_flight is not None
            and self._in_flight.stage == "publish"
        )

    def _start_flush(self) -> None:
        """Writing thread: hand everything to the OS; the sync thread makes it durable."""
        if self._in_flight is not None:
            return
        self._write_all()
        flight = _InFlight(self.file.begin_flush(), self._last_tag, time.monotonic())
        self._unflushed_since = None
        self._unflushed_bytes = 0
        with self._cond:
            self._in_flight = flight
            self._syncs.append(flight)
            self._cond.notify_all()

    def _advance_flush(self) -> None:
        """Writing thread: publish the counts of a flush whose data is on disk."""
        flight = self._in_flight
        if flight is not None and flight.stage == "publish":
            self.file.publish(flight.ticket)
            with self._cond:
                flight.stage = "counts"
                self._syncs.append(flight)
                self._cond.notify_all()

    def _flush_now(self) -> None:
        """Writing thread: a flush of everything so far, waited for (``flush()``, close)."""
        self._finish_flight()
        self._start_flush()
        self._finish_flight()

    def _finish_flight(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._in_flight is None or self._publish_due() or self._error
                )
                if self._in_flight is None or self._error is not None:
                    return
            self._advance_flush()

    def _sync_loop(self) -> None:
        """Sync thread: ``fsync`` the data, then the counts, then acknowledge."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._syncs))
                flight = self._syncs.popleft()
            if flight is None:
                return
            try:
                self.file.sync()
            except Exception as e:
                self._fail(e)
                continue
            if flight.stage == "data":
                with self._cond:
                    flight.stage = "publish"
                    self._cond.notify_all()
                continue
            self.last_flush_seconds = time.monotonic() - flight.started
            self._durable = list(flight.ticket.frames)
            if self._on_flush is not None:
                self._guarded(self._on_flush, list(self._durable), flight.tag)
            with self._cond:
                self._in_flight = None
                self._cond.notify_all()

    def _guarded(self, action: Callable[..., None], *args: object) -> None:
        """Run ``action``; on failure record the error. Flush markers always complete."""
        if self._error is None:
            try:
                action(*args)
            except Exception as e:
                self._fail(e)
        for arg in args:
            if isinstance(arg, _Flush):
                arg.done.set()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            first = self._error is None
            if first:
                self._error = error
            # Nothing more is written: drop what is buffered and wake every caller.
            self._buffers = [_Buffer() for _ in self._buffers]
            self._pending_bytes = 0
            self._cond.notify_all()
        if first and self._on_error is not None:
            self._on_error(error)

    def _release(self, nbytes: int) -> None:
        with self._cond:
            if self._error is None:
                self._pending_bytes -= nbytes
            self._cond.notify_all()

    def _has_buffered(self) -> bool:
        return any(buffer.blocks for buffer in self._buffers)

    def _over_flush_bytes(self) -> bool:
        return self.flush_bytes is not None and self._unflushed_bytes >= self.flush_bytes

    def _flush_due_in(self) -> float | None:
        if self._unflushed_since is None or self._error or self._in_flight is not None:
            return None
        if self._over_flush_bytes():
            return 0.0
        if self.flush_interval is None:
            return None
        return max(0.0, self._unflushed_since + self.flush_interval - time.monotonic())

    def _process(self, item: _Block | _Frames | _Flush) -> None:
        if isinstance(item, _Flush):
            self._write_all()
            self._flush_now()
            return
        if self._unflushed_since is None:
            self._unflushed_since = time.monotonic()
        self._unflushed_bytes += item.nbytes
        if isinstance(item, _Frames):
            self._add_frames(item.frames)
            return
        if item.tag is not None:
            self._last_tag = item.tag
        if self._written_alone(item.group, item.count):
            self._write_buffer(item.group)
            self._write(item.group, item.start, item.count, item.leaves, item.nbytes, item.prepared)
            return
        # Small blocks (a client's short blocks) are merged so that chunks are
        # written whole, once, rather than at every block.
        self._append(item.group, item.start, item.count, item.leaves, item.nbytes, frames=False)

    def _add_frames(self, frames: Sequence[tuple[int, int, Sequence[np.ndarray]]]) -> None:
        """Buffer the frames of one step (see :meth:`_add_frame`).

        The common case -- the next frame of a group whose buffer holds frames
        and is not full -- is inlined: the writing thread does this for every
        frame logged, holding the GIL the logging thread needs.
        """
        buffers, batches, sizes = self._buffers, self._batch, self._frame_nbytes
        for group, index, leaves in frames:
            buffer = buffers[group]  # groups were checked when submitted
            if (
                buffer.frames
                and buffer.blocks
                and index == buffer.start + buffer.count
                and type(leaves) is tuple
            ):
                if buffer.add(leaves, 1, sizes[group], batches[group]):
                    self._write_buffer(group)
            else:
                self._add_frame(group, index, leaves)

    def _add_frame(self, group: int, index: int, leaves: Sequence[np.ndarray]) -> None:
        """Buffer one frame of a step, or write it at once where frames are written alone."""
        nbytes = self._frame_nbytes[group]
        if self._written_alone(group, 1):
            self._write_buffer(group)
            self._write(group, index, 1, [leaf[np.newaxis] for leaf in leaves], nbytes)
            return
        # A tuple of arrays, which the garbage collector stops tracking (see submit_frames).
        held = leaves if type(leaves) is tuple else tuple(leaves)
        self._append(group, index, 1, held, nbytes, frames=True)

    def _append(
        self,
        group: int,
        start: int,
        count: int,
        leaves: Sequence[np.ndarray],
        nbytes: int,
        *,
        frames: bool,
    ) -> None:
        """Add a block (or a single frame) to ``group``'s buffer; write it once a batch is full."""
        buffer = self._buffers[group]
        if buffer.blocks and (start != buffer.stop or buffer.frames != frames):
            self._write_buffer(group)
            buffer = self._buffers[group]
        if not buffer.blocks:
            buffer.start = start
            buffer.frames = frames
        if buffer.add(leaves, count, nbytes, self._batch[group]):
            self._write_buffer(group)

    def _written_alone(self, group: int, count: int) -> bool:
        """Whether ``count`` frames of ``group`` are written as they are, not merged with others."""
        return count >= self._batch[group] or not self.file.spec.groups[group].time_axis

    def _write_buffer(self, group: int) -> None:
        buffer = self._buffers[group]
        if not buffer.blocks:
            return
        if buffer.frames:
            leaves = [np.stack(column) for column in zip(*buffer.blocks, strict=True)]
        elif len(buffer.blocks) == 1:
            leaves = list(buffer.blocks[0])
        else:
            leaves = [np.concatenate(column) for column in zip(*buffer.blocks, strict=True)]
        start, count, nbytes = buffer.start, buffer.count, buffer.nbytes
        self._buffers[group] = _Buffer()
        self._write(group, start, count, leaves, nbytes)

    def _write(
        self,
        group: int,
        start: int,
        count: int,
        leaves: Sequence[np.ndarray],
        nbytes: int,
        prepared: PreparedBlock | None = None,
    ) -> None:
        try:
            self.file.write_block(group, start, count, leaves, prepared)
        finally:
            self._release(nbytes)

    def _write_all(self) -> None:
        for group in range(len(self._buffers)):
            self._write_buffer(group)

"""The remote writer's background half: frames to blocks, blocks to the wire, acks back.

An encoder thread turns each step's frames into blocks
(:class:`~trajstore.client.batching.FrameBatcher`); a stream thread sends
them and takes the store's acknowledgements.

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
with backoff between attempts; a run held for a moment (``RunLockedError``)
is tried again like a store away, within ``reconnect_timeout``
(:func:`~trajstore.client.session.open_retrying`). Block writes are idempotent by time index,
so a block that was durable but not yet acknowledged is simply written again:
the run ends with every frame exactly once.

Given a journal (``open_journal``), a store unreachable past
``reconnect_timeout`` does not fail the sender: the blocks it holds go to
the journal (:mod:`trajstore.client.journal`), and so does every block
sealed afterwards, so ``put_frame`` no longer waits for the store. The
sender keeps reconnecting; once the store answers, a feeder thread reads
the journal in order into the send queue (bounded by ``max_pending_bytes``
like the frames), new blocks go to memory again once it has caught up, and
the journal is deleted when the store has acknowledged its last block. While
the store is away, :meth:`BlockSender.flush` returns once everything put so
far is durable in the journal. A journal the store has not taken all of
when the sender closes stays on disk (:attr:`BlockSender.journal_left`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from tenacity import stop_after_delay, stop_when_event_set
from tenacity.stop import stop_base

from trajstore import wire
from trajstore.blockcodec import OutgoingPart, split_views
from trajstore.client.batching import FrameBatcher
from trajstore.client.journal import JournalBlock, JournalReader, JournalWriter
from trajstore.client.session import Session, open_retrying
from trajstore.errors import (
    GroupNotFoundError,
    JournalError,
    NotOpenError,
    RunLockedError,
    TrajstoreError,
    UnavailableError,
)
from trajstore.schema import RunSpec
from trajstore.v1 import ingest_pb2 as pb

__all__ = ["BlockSender"]

log = logging.getLogger("trajstore.client")

#: While frames keep coming, the encoder looks for them this often (seconds)
#: rather than being woken -- with every other thread waiting on the lock --
#: at each step (issue 18: the wake-up cost as much as the rest of ``log()``);
#: a flush, the end, or this many queued frames or bytes wake it at once.
FRAME_POLL_SECONDS = 0.01
FRAME_WAKE_ITEMS = 1024
FRAME_WAKE_BYTES = 1 << 20


@dataclass
class _StepFrames:
    """The frames of one step, ``(group, index, leaves)`` each, as ``log()`` gave them."""

    frames: Sequence[tuple[int, int, Sequence[np.ndarray]]]
    nbytes: int


@dataclass
class _RawBlock:
    """A block encoded elsewhere (a journal being pushed), queued like frames."""

    group: int
    start: int
    count: int
    actual_steps: int
    payload: bytes


@dataclass
class _FlushMarker:
    done: threading.Event = field(default_factory=threading.Event)
    target: int = -1  # block to wait for; set by the encoder


@dataclass
class _Block:
    """An encoded block, kept until the store acknowledges it."""

    number: int  # the sender's own numbering, 1, 2, ... across sessions
    group: int
    start: int
    count: int
    total_bytes: int
    parts: list[tuple[int, list[memoryview]]]  # views of the frames (blockcodec.split_views)
    nbytes: int  # logged bytes it accounts for
    actual_steps: int
    journal_offset: int | None = None  # where it lies in the journal, when read from there


class _StreamBrokeError(Exception):
    """The write stream ended or failed in a way worth reconnecting for."""


_RETRIABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


def _no_group(group: object) -> GroupNotFoundError:
    return GroupNotFoundError(f"the run has no group at position {group!r}")


def _shorter(timeout: float | None, poll: float) -> float:
    return poll if timeout is None else min(timeout, poll)


_END = object()


class BlockSender:
    """Streams one run's frames to the store, reconnecting when the stream breaks.

    Args:
        write: The IngestService.Write method (:func:`~trajstore.blockcodec.write_method`).
        session: The session from OpenRun.
        spec: The run's schema.
        reopen: Opens the run again in ``append`` mode, taking over the given
            session id; returns the new session (raises on failure).
        metadata: Call metadata (credentials).
        max_pending_bytes: Bound on bytes logged but not yet acknowledged.
        send_interval: A partly filled block is sent after this many seconds.
        reconnect_timeout: Give up (and fail) after the store has been
            unreachable this long -- or, given ``open_journal``, spill to the
            journal it creates and keep reconnecting.
        open_journal: Creates the spill journal (see the module docstring).
    """

    def __init__(
        self,
        write: grpc.StreamStreamMultiCallable,
        session: Session,
        spec: RunSpec,
        *,
        reopen: Callable[[str], Session],
        metadata: tuple[tuple[str, str], ...] = (),
        max_pending_bytes: int = 64 << 20,
        send_interval: float = 0.1,
        reconnect_timeout: float = 300.0,
        open_journal: Callable[[], JournalWriter] | None = None,
    ) -> None:
        self.spec = spec
        self.max_pending_bytes = max_pending_bytes
        self.send_interval = send_interval
        self.reconnect_timeout = reconnect_timeout
        self.actual_steps = 0
        #: Times the stream broke and was re-established.
        self.reconnects = 0
        self._write = write
        self._reopen = reopen
        self._metadata = metadata
        self._session = session
        self._batcher = FrameBatcher(spec, self._enqueue_frames)  # the encoder's own
        self._frame_nbytes = self._batcher.frame_nbytes
        self._cond = threading.Condition()
        self._inbox: deque[_StepFrames | _RawBlock | _FlushMarker | object] = deque()
        self._inbox_bytes = 0  # frame bytes queued since the encoder last took the inbox
        self._encoder_polling = False  # the encoder looks for frames every FRAME_POLL_SECONDS
        self._encoder_busy = False  # it works on items it took: it looks for more when done
        self._pending_bytes = 0
        self._blocks: deque[_Block] = deque()  # sealed, not yet acknowledged
        self._markers: list[_FlushMarker] = []
        self._flush_wanted = 0  # flushes requested by the encoder
        self._acked = 0
        self._next_block = 1
        self._error: TrajstoreError | None = None
        self._ending = False
        self._closed = False
        self._stopping = threading.Event()  # closed: stop reconnecting
        self._wake = threading.Event()  # cut a reconnect backoff short
        self._reopen_attempts = 0
        self._stream: grpc.Future | None = None
        self._connected = True
        # The spill journal (module docstring). While spilling, sealed blocks
        # go to the journal; the feeder moves them from ``_feed_offset`` into
        # ``_blocks`` while the store is connected. ``_journal_synced``: the
        # last block number that is durable in the store or the journal.
        self._open_journal = open_journal
        self._journal: JournalWriter | None = None
        self._spilling = False
        self._feed_offset = 0
        self._feed_generation = 0
        self._feeder: threading.Thread | None = None
        self._replay_bytes = 0
        self._journal_synced = 0
        self._unjournaled: list[_Block] = []  # blocks a failed journal write lost
        #: The journal left on disk by :meth:`close` (the store did not take all of it).
        self.journal_left: Path | None = None
        #: ``(frames per group, actual steps)`` once the store closed the run on
        #: :meth:`close`'s request (``None``: not closed through the stream).
        self.closed_run: tuple[list[int], int] | None = None
        self._close_run = False  # close() asked the store to close the run
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
        self.put_frames([(group, index, leaves)])

    def put_frames(self, frames: Sequence[tuple[int, int, Sequence[np.ndarray]]]) -> None:
        """Queue the frames of one step, ``(group, index, leaves)`` each, in one go.

        One lock round trip for them all; they wait for room together (a step
        larger than the bound still goes through alone).

        Raises:
            GroupNotFoundError: A frame names a group the run lacks (nothing
                is queued).
        """
        sizes = self._frame_nbytes  # from the schema: the leaves were checked against it
        try:
            nbytes = sum([sizes[group] for group, _, _ in frames])
        except KeyError as e:
            raise _no_group(e.args[0]) from None
        item = _StepFrames(frames, nbytes)
        with self._cond:
            inbox = self._inbox
            # The common case, while steps keep coming: room, and the encoder
            # busy (it takes the inbox when done) or polling with nothing to
            # wake it for. Otherwise the full path below.
            if (
                self._error is None
                and not self._closed
                and self._pending_bytes + nbytes <= self.max_pending_bytes
                and (
                    self._encoder_busy
                    or (
                        self._encoder_polling
                        and len(inbox) < FRAME_WAKE_ITEMS - 1
                        and self._inbox_bytes + nbytes < FRAME_WAKE_BYTES
                    )
                )
            ):
                self._pending_bytes += nbytes
                self._inbox_bytes += nbytes
                inbox.append(item)
                return
            self._check_open()
            while (
                self._pending_bytes
                and self._pending_bytes + nbytes > self.max_pending_bytes
                and self._error is None
            ):
                self._cond.wait()
            self.raise_if_failed()
            self._pending_bytes += nbytes
            inbox.append(item)
            self._inbox_bytes += nbytes
            if self._encoder_busy or (
                self._encoder_polling
                and len(inbox) < FRAME_WAKE_ITEMS
                and self._inbox_bytes < FRAME_WAKE_BYTES
            ):
                return  # the encoder takes them when done, or within FRAME_POLL_SECONDS
            self._cond.notify_all()

    def put_block(
        self, group: int, start: int, count: int, payload: bytes, actual_steps: int
    ) -> None:
        """Queue a block encoded elsewhere (its frames' leaves concatenated), in order.

        Raises:
            GroupNotFoundError: ``group`` is not a group of the run.
        """
        if group not in self._frame_nbytes:
            raise _no_group(group)
        with self._cond:
            self._check_open()
            while (
                self._pending_bytes
                and self._pending_bytes + len(payload) > self.max_pending_bytes
                and self._error is None
            ):
                self._cond.wait()
            self.raise_if_failed()
            self._pending_bytes += len(payload)
            self._inbox.append(_RawBlock(group, start, count, actual_steps, payload))
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything put so far is durable on the store (or in the journal)."""
        marker = _FlushMarker()
        with self._cond:
            self._check_open()
            self._inbox.append(marker)
            self._cond.notify_all()
        done = marker.done.wait(timeout)
        self.raise_if_failed()
        return done

    def close(self, *, close_run: bool = False) -> None:
        """Flush, end the stream and stop the threads; raise any error.

        A journal still holding blocks the store has not acknowledged stays
        on disk, with a closing record, as :attr:`journal_left`.

        Args:
            close_run: Also have the store close the run (recording
                :attr:`actual_steps`) through the write stream, which reaches
                the store process holding the session; a stream that breaks
                before the store confirmed is reopened to close again.
                :attr:`closed_run` says whether it was.
        """
        if self._closed:
            return
        try:
            if self._error is None:
                self.flush()
                if self._journal is not None and not self._connected and self._try_store_now():
                    self.flush()  # the store is back: upload the journal before closing
        finally:
            with self._cond:
                self._close_run = close_run and self._error is None and not self._spilling
                self._closed = True
                self._inbox.append(_END)
                self._cond.notify_all()
            self._stopping.set()
            self._wake.set()
            self._encoder.join()
            self._receiver.join()
            feeder = self._feeder
            if feeder is not None:
                feeder.join()
            self._close_journal()
        self.raise_if_failed()

    def _try_store_now(self, timeout: float = 30.0) -> bool:
        """Make the reconnecting thread try the store at once; ``True`` if it is back."""
        with self._cond:
            attempts = self._reopen_attempts
            self._wake.set()
            self._cond.wait_for(
                lambda: self._connected or self._reopen_attempts > attempts or self._error,
                timeout,
            )
            return self._connected

    def _close_journal(self) -> None:
        journal, self._journal = self._journal, None
        if journal is None:
            return
        if self._error is None and self._acked == self._next_block - 1:
            journal.remove()  # the store took everything in it
            return
        self.journal_left = journal.path
        try:
            if self._error is None:
                journal.append_end(self.actual_steps)
        finally:
            try:
                journal.close()
            except JournalError as e:
                if self._error is None:
                    raise
                self._error.add_note(f"closing the journal failed too: {e}")
        if self._error is not None:
            self._error.add_note(self._journal_note(journal.path))

    def _journal_note(self, path: Path) -> str:
        """What a failed sender's journal holds, for the error's notes."""
        lost = [
            b
            for b in (*self._blocks, *self._unjournaled)
            if b.number > self._acked and b.journal_offset is None
        ]
        note = (
            f"blocks not acknowledged that reached the journal are kept in {path}: "
            f"upload them with `trajstore push {path}`"
        )
        if lost:
            frames = sum(b.count for b in lost)
            note += (
                f"; {len(lost)} block(s) ({frames} frames) held in memory could not be "
                f"written to it and are in neither the store nor the journal"
            )
        return note

    def cancel(self) -> None:
        """Abandon the stream at once (the writer is failing anyway); keep any journal."""
        with self._cond:
            self._closed = True
            self._ending = True
            self._inbox.append(_END)
            self._cond.notify_all()
            stream = self._stream
            journal, self._journal = self._journal, None
        self._stopping.set()
        self._wake.set()
        if stream is not None:
            stream.cancel()
        if journal is not None:
            self.journal_left = journal.path
            with contextlib.suppress(JournalError):
                journal.close()

    def _check_open(self) -> None:
        self.raise_if_failed()
        if self._closed:
            raise NotOpenError("the remote writer is closed")

    # ------------------------------------------------------- encoder thread

    def _encode_loop(self) -> None:
        items: list[object] = []
        try:
            while True:
                with self._cond:
                    while not self._inbox:
                        wait = self._next_send_due()
                        if wait is not None and wait <= 0:
                            break
                        self._encoder_busy = False
                        if not self._encoder_polling:
                            self._cond.wait(wait)
                        elif not self._cond.wait(_shorter(wait, FRAME_POLL_SECONDS)):
                            # Nothing came for a whole poll: be woken by the next frame.
                            self._encoder_polling = bool(self._inbox)
                    self._encoder_busy = True
                    items = list(self._inbox)
                    self._inbox.clear()
                    self._inbox_bytes = 0
                    # Frames keep coming: look for the next ones rather than be woken.
                    self._encoder_polling = any(isinstance(item, _StepFrames) for item in items)
                for item in items:
                    if item is _END:
                        with self._cond:
                            self._ending = True
                            self._cond.notify_all()
                        return
                    if isinstance(item, _FlushMarker):
                        self._batcher.seal_all()
                        with self._cond:
                            item.target = self._next_block - 1
                            if self._spilling and self._journal is not None:
                                # Under the lock: a flush while the store is away waits
                                # for the disk, and so may a log() meanwhile.
                                self._journal.sync()
                                self._journal_synced = item.target
                            self._flush_wanted += 1
                            self._markers.append(item)
                            self._complete_markers()
                            self._cond.notify_all()
                    elif isinstance(item, _StepFrames):
                        self._batcher.add(item.frames)
                    elif isinstance(item, _RawBlock):
                        self._add_raw(item)
                due = self._next_send_due()
                if due is not None and due <= 0:
                    self._batcher.seal_all(older_than=self.send_interval)
        except TrajstoreError as e:  # e.g. the journal could not be written
            self._fail(e, unprocessed=items)
        except Exception as e:  # encoding must never die silently
            self._fail(TrajstoreError(f"encoding frames failed: {e!r}"), unprocessed=items)

    def _next_send_due(self) -> float | None:
        oldest = self._batcher.oldest()
        if oldest is None:
            return None
        return oldest + self.send_interval - time.monotonic()

    def _add_raw(self, raw: _RawBlock) -> None:
        self._batcher.seal(raw.group)  # blocks stay in order
        array = np.frombuffer(raw.payload, np.uint8)
        parts = list(split_views([array], self._session.part_bytes))
        self._enqueue(raw.group, raw.start, raw.count, parts, len(raw.payload), raw.actual_steps)

    def _enqueue_frames(
        self, group: int, start: int, count: int, buffers: list[np.ndarray], nbytes: int
    ) -> None:
        """Queue a block the batcher sealed, in parts the current session takes."""
        parts = list(split_views(buffers, self._session.part_bytes))
        self._enqueue(group, start, count, parts, nbytes, self.actual_steps)

    def _enqueue(
        self,
        group: int,
        start: int,
        count: int,
        parts: list[tuple[int, list[memoryview]]],
        nbytes: int,
        actual_steps: int,
    ) -> None:
        """Number a sealed block and queue it -- in memory, or in the journal while spilling."""
        with self._cond:
            block = _Block(
                number=self._next_block,
                group=group,
                start=start,
                count=count,
                total_bytes=sum(len(v) for _, views in parts for v in views),
                parts=parts,
                nbytes=nbytes,
                actual_steps=actual_steps,
            )
            self._next_block += 1
            if self._spilling and self._journal is not None:
                try:
                    self._write_to_journal(self._journal, block)
                except JournalError:
                    self._unjournaled.append(block)  # for the error's note
                    raise
            else:
                self._blocks.append(block)
            self._cond.notify_all()

    # ------------------------------------------- stream and receiver thread

    def _requests(
        self, session: Session, first_block: int, sent: list[int]
    ) -> Iterator[pb.WriteRequest | OutgoingPart]:
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
                    if self._error is not None:
                        return  # failed: nothing more will be sent
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
                for offset, views in block.parts:
                    header = pb.WriteRequest(
                        block=len(sent),
                        group=block.group,
                        start=block.start,
                        count=block.count,
                        total_bytes=block.total_bytes,
                        offset=offset,
                        actual_steps=block.actual_steps,
                    )
                    yield OutgoingPart(header, views)
                cursor += 1
            elif wanted > flushes_sent:
                flushes_sent = wanted
                yield pb.WriteRequest(flush=True, actual_steps=self.actual_steps)
            elif ending:
                if self._close_run:
                    yield pb.WriteRequest(close=True, actual_steps=self.actual_steps)
                return
            else:
                yield pb.WriteRequest()  # keepalive: renews the lease
            last_sent = time.monotonic()

    @property
    def _close_unsure(self) -> bool:
        """Whether the run is to be closed and the store has not confirmed it."""
        return self._close_run and self.closed_run is None

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
                if self._error is not None or (
                    self._closed and self._ending and not self._blocks and not self._close_unsure
                ):
                    return
                log.warning("write stream broke (%s); reconnecting", broke)
            except TrajstoreError as e:
                self._fail(e)
                return
            with self._cond:
                self._connected = False
                self._complete_markers()
            try:
                if not self._reconnect():
                    return  # closed while the journal holds the rest
            except TrajstoreError as e:
                self._fail(e)
                return
            with self._cond:
                first_block = self._acked + 1

    def _run_stream(self, first_block: int) -> None:
        session = self._session
        sent: list[int] = []
        responses = self._write(self._requests(session, first_block, sent), metadata=self._metadata)
        with self._cond:
            self._stream = responses
        try:
            for response in responses:
                acked = int(response.durable_block)
                if 0 < acked <= len(sent):
                    self._on_ack(sent[acked - 1])
                if response.closed:
                    self.closed_run = (list(response.durable_frames), int(response.actual_steps))
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

    def _reconnect(self) -> bool:
        """Open the run again; ``False`` when closed first (while spilling).

        Tries for ``reconnect_timeout`` seconds; then, with a journal, spills
        and tries until the store answers or the sender closes.
        """
        session = None if self._spilling else self._reopen_within(self.reconnect_timeout)
        if session is None:
            open_journal = self._open_journal
            if open_journal is None and self._stopping.is_set():
                raise UnavailableError(
                    "the writer closed while the store was unreachable; "
                    "frames not yet acknowledged were not stored"
                )
            if open_journal is None:
                raise UnavailableError(
                    f"the store stayed unreachable for {self.reconnect_timeout:.0f}s; "
                    f"frames not yet acknowledged were not stored"
                )
            with self._cond:
                self._spill(open_journal)
            session = self._reopen_within(None)
            if session is None or self._stopping.is_set():
                return False  # closed first: the journal keeps the rest (its lease runs out)
        with self._cond:
            self._session = session
            self._connected = True
            self.reconnects += 1
            self._cond.notify_all()
        log.warning("reconnected: resending unacknowledged blocks", extra={"session": session.id})
        return True

    def _reopen_within(self, timeout: float | None) -> Session | None:
        """Reopen with backoff for ``timeout`` s (``None``: until closed); ``None`` if not.

        A run held for a moment (:class:`RunLockedError`: the store still
        releasing this writer's previous session, say) is tried again like a
        store away, within the same budget.

        Raises:
            RunLockedError: The run stayed held past the budget (while not
                spilling: then the journal keeps the frames, as for a store away).
        """
        stop: stop_base = stop_when_event_set(self._stopping)
        if timeout is not None:
            stop = stop | stop_after_delay(timeout)
        try:
            return open_retrying(self._reopen_once, stop=stop, sleep=self._pause)
        except UnavailableError:
            return None
        except RunLockedError:
            if self._spilling:
                return None
            raise

    def _reopen_once(self) -> Session:
        """One OpenRun taking over the current session; counted for :meth:`_try_store_now`."""
        if self._closed and self._error is not None:
            raise self._error
        try:
            return self._reopen(self._session.id)
        finally:
            with self._cond:
                self._reopen_attempts += 1
                self._cond.notify_all()

    def _pause(self, seconds: float) -> None:
        """Backoff sleep that ends early when the sender closes."""
        self._wake.wait(seconds)
        if not self._stopping.is_set():
            self._wake.clear()

    # ---------------------------------------------------------------- journal

    def _spill(self, open_journal: Callable[[], JournalWriter]) -> None:
        """Move the blocks held in memory to the journal and spill from now on. Lock held."""
        journal = self._journal
        feeding = journal is not None and self._spilling  # the feeder has not caught up yet
        if journal is None:
            journal = self._journal = open_journal()
            log.warning(
                "the store stayed unreachable for %.0fs: spilling to the journal %s",
                self.reconnect_timeout,
                journal.path,
            )
        # Blocks read from the journal (they come first) are dropped, to be read again;
        # with none held, a feed under way goes on from where it is.
        fed = [b for b in self._blocks if b.journal_offset is not None]
        if fed:
            self._feed_offset = int(fed[0].journal_offset or 0)
        elif not feeding:
            self._feed_offset = journal.size
        self._replay_bytes -= sum(b.nbytes for b in fed)
        self._feed_generation += 1
        self._spilling = True
        held = deque(b for b in self._blocks if b.journal_offset is None)
        self._blocks = held
        while held:  # each block leaves memory only once the journal has it
            self._write_to_journal(journal, held[0])
            held.popleft()
        journal.sync()
        self._journal_synced = self._next_block - 1
        if self._feeder is None:
            self._feeder = threading.Thread(
                target=self._feed_loop, args=(journal.path,), name="trajstore-journal", daemon=True
            )
            self._feeder.start()
        self._complete_markers()
        self._cond.notify_all()

    def _write_to_journal(self, journal: JournalWriter, block: _Block) -> None:
        """Append a sealed block to the journal; it no longer counts as pending. Lock held."""
        journal.append_block(
            block.number,
            block.group,
            block.start,
            block.count,
            block.actual_steps,
            [view for _, views in block.parts for view in views],
        )
        self._pending_bytes -= block.nbytes

    def _feed_loop(self, path: Path) -> None:
        """Read the journal into the send queue while the store is connected."""
        try:
            with JournalReader(path) as reader:
                while self._feed_one(reader):
                    pass
        except TrajstoreError as e:
            self._fail(e)
        except Exception as e:  # reading must never die silently
            self._fail(JournalError(f"reading the journal back failed: {e!r}"))

    def _feed_one(self, reader: JournalReader) -> bool:
        """Move one journal record to the send queue; ``False`` once caught up or stopped."""
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    self._closed
                    or self._error is not None
                    or (self._connected and self._replay_bytes < self.max_pending_bytes)
                )
            )
            journal = self._journal
            if self._closed or self._error is not None or journal is None:
                self._feeder = None
                return False
            if self._feed_offset >= journal.size:  # caught up: new blocks stay in memory
                self._spilling = False
                self._feeder = None
                self._release()
                return False
            offset, generation, end = self._feed_offset, self._feed_generation, journal.size
        found = reader.read_at(offset, end)
        if found is None:
            raise JournalError(f"journal {reader.path}: the record at byte {offset} is damaged")
        record, after = found
        with self._cond:
            if generation != self._feed_generation:
                return True  # a new spill moved the read position
            self._feed_offset = after
            if isinstance(record, JournalBlock) and record.number > self._acked:
                self._blocks.append(self._block_from(record, offset))
                self._replay_bytes += len(record.payload)
                self._cond.notify_all()
        return True

    def _block_from(self, record: JournalBlock, offset: int) -> _Block:
        array = np.frombuffer(record.payload, np.uint8)
        return _Block(
            number=record.number,
            group=record.group,
            start=record.start,
            count=record.count,
            total_bytes=len(record.payload),
            parts=list(split_views([array], self._session.part_bytes)),
            nbytes=len(record.payload),
            actual_steps=record.actual_steps,
            journal_offset=offset,
        )

    def _on_ack(self, block: int) -> None:
        with self._cond:
            self._acked = max(self._acked, block)
            self._release()

    def _release(self) -> None:
        """Drop blocks the store holds durably (in order); wake whoever waits. Lock held."""
        while self._blocks and self._blocks[0].number <= self._acked:
            block = self._blocks.popleft()
            if block.journal_offset is None:
                self._pending_bytes -= block.nbytes
            else:
                self._replay_bytes -= block.nbytes
        journal = self._journal
        if (
            journal is not None
            and not self._spilling
            and (not self._blocks or self._blocks[0].journal_offset is None)
        ):
            self._journal = None
            journal.remove()  # the store holds everything it had
            log.warning("the store took the whole journal %s; removed it", journal.path)
        self._complete_markers()
        self._cond.notify_all()

    def _complete_markers(self) -> None:
        """Complete flushes whose blocks are all durable (while away: in the journal). Lock held.

        After a failure every flush completes: its caller raises the error.
        """
        if self._error is not None:
            for marker in self._markers:
                marker.done.set()
            self._markers = []
            return
        durable = self._acked
        if not self._connected:
            durable = max(durable, self._journal_synced)
        waiting = []
        for marker in self._markers:
            if 0 <= marker.target <= durable:
                marker.done.set()
            else:
                waiting.append(marker)
        self._markers = waiting

    def _fail(self, error: TrajstoreError, unprocessed: Iterable[object] = ()) -> None:
        """Record ``error`` and wake every flush, also those the encoder has not taken yet."""
        with self._cond:
            if self._error is None:
                self._error = error
            for item in (*unprocessed, *self._inbox):
                if isinstance(item, _FlushMarker):
                    item.done.set()
            self._complete_markers()
            self._ending = True
            self._cond.notify_all()
            stream = self._stream
        if stream is not None:
            stream.cancel()  # the receiver stops waiting for acks that will not come

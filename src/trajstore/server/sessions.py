"""Writer sessions: one open run, its background writer, and its acknowledgements."""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trajstore.errors import (
    FailedPreconditionError,
    FrameMismatchError,
    InvalidArgumentError,
    ResourceExhaustedError,
    RunExistsError,
    RunLockedError,
    RunNotFoundError,
    StepOrderError,
    TrajstoreError,
    UnavailableError,
)
from trajstore.schema import RunSpec
from trajstore.server.config import ServerConfig
from trajstore.server.files import RunFiles
from trajstore.server.limits import check_schema
from trajstore.server.metrics import Metrics
from trajstore.server.names import run_path
from trajstore.store import layout
from trajstore.store.background import BackgroundWriter
from trajstore.store.open_run import open_run_writer
from trajstore.store.ownership import is_locked
from trajstore.store.writer import OpenMode

__all__ = ["Ack", "BlockHeader", "RunRegistry", "WriterSession"]

log = logging.getLogger("trajstore.server")

#: How long an OpenRun waits for the run's last writer to finish closing and
#: for reads of the run to end, before it raises RunLockedError.
OPEN_WAIT_SECONDS = 30.0


def _close_logged(session: WriterSession, why: str) -> None:
    try:
        session.writer.close()
        log.info("run closed", extra={"run": session.run, "why": why})
    except Exception:
        log.exception("run failed to close cleanly", extra={"run": session.run, "why": why})
    finally:
        session.closed = True
        session.wake()


@dataclass(frozen=True)
class Ack:
    """What is durable: every block up to ``block``, and ``frames`` per group."""

    block: int
    frames: tuple[int, ...]


@dataclass(frozen=True)
class BlockHeader:
    """The fields of a WriteRequest that describe its block."""

    block: int
    group: int
    start: int
    count: int
    total_bytes: int


@dataclass
class _Assembly:
    header: BlockHeader
    buffer: np.ndarray  # uint8, not zero-filled: every byte is received before it is read
    received: int = 0


@dataclass
class WriterSession:
    """One writer's hold on one run."""

    id: str
    run: str
    spec: RunSpec
    writer: BackgroundWriter
    max_block_bytes: int
    metrics: Metrics | None = None
    #: A writer reconnecting (it names its earlier session): the frames it
    #: rewrites are resent, the same as before, so the run's generation stays.
    resend: bool = False
    last_active: float = field(default_factory=time.monotonic)
    ack: Ack = Ack(0, ())
    closed: bool = False
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _streaming: threading.Lock = field(default_factory=threading.Lock)
    _next_frame: list[int] = field(default_factory=list)
    _last_block: int = 0
    _assembly: _Assembly | None = None
    _rewinds: list[tuple[int, int, int]] = field(default_factory=list)  # (block, group, start)
    _submitting: int = 0  # blocks being handed to the writer (it may wait for room)
    #: The run's generation as readers see it (with ``ack``); see :meth:`rewound_since`.
    generation: int = 0
    _first_generation: int = 0
    _generations: list[tuple[int, int, int]] = field(default_factory=list)  # (to, group, start)

    def __post_init__(self) -> None:
        self._next_frame = [0] * len(self.spec.groups)
        self._frame_bytes = [g.frame_nbytes for g in self.spec.groups]
        self.ack = Ack(0, tuple(self.writer.durable_frames))
        self.generation = self._first_generation = self.writer.file.generation
        self.writer.file.announce_generation(self.generation)  # rewrites take ours

    def touch(self) -> None:
        """Note activity (keeps the lease)."""
        self.last_active = time.monotonic()

    def idle_seconds(self) -> float:
        """Seconds since the writer was last heard from; 0 while the store holds it up.

        A block waiting for room in the background writer (a slow disk) is
        the store's delay, not the writer's: its lease does not run meanwhile.
        """
        if self._submitting:
            return 0.0
        return time.monotonic() - self.last_active

    def on_flush(self, frames: list[int], tag: int | None) -> None:
        """Record a flush of the background writer (called on its thread).

        Readers see the durable frames, less any frames a rewriting block
        not yet durable is about to replace (see :meth:`_submit`).
        """
        with self._changed:
            block = tag if tag is not None else self.ack.block
            self._rewinds = [r for r in self._rewinds if r[0] > block]
            visible = list(frames)
            for _, group, start in self._rewinds:
                visible[group] = min(visible[group], start)
            self.ack = Ack(block, tuple(visible))
            self._changed.notify_all()
        if self.metrics is not None:
            self.metrics.acknowledgements.inc()
            self.metrics.flush_seconds.observe(self.writer.last_flush_seconds)

    def view(self) -> tuple[Ack, int]:
        """The frames readers see now and the generation they belong to, taken together."""
        with self._changed:
            return self.ack, self.generation

    def rewound_since(self, generation: int, group: int) -> tuple[bool, int | None]:
        """Whether ``generation`` is one this session went through, and where ``group`` rewound.

        Returns ``(known, first)``: ``known`` is false for a generation this
        session never showed (an earlier version of the run); else ``first``
        is the lowest frame of ``group`` rewritten since ``generation``, or
        ``None`` if the group's frames did not change since.
        """
        with self._changed:
            if generation == self._first_generation:
                since = 0
            else:
                later = [i for i, (to, _, _) in enumerate(self._generations) if to == generation]
                if not later:
                    return False, None
                since = later[0] + 1
            starts = [start for _, g, start in self._generations[since:] if g == group]
        return True, min(starts) if starts else None

    def wait_for_ack(self, after: Ack, timeout: float, stop: Callable[[], bool]) -> Ack:
        """Wait up to ``timeout`` s for an acknowledgement other than ``after``, or ``stop()``."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.ack != after or self.closed or self.writer.failed or stop(), timeout
            )
            return self.ack

    def wake(self) -> None:
        """Wake threads waiting for acknowledgements."""
        with self._changed:
            self._changed.notify_all()

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """Hold the session's single write stream."""
        if not self._streaming.acquire(blocking=False):
            raise RunLockedError(f"run {self.run!r} already has a write stream in this session")
        try:
            yield
        finally:
            self._streaming.release()

    def receive(
        self, header: BlockHeader, offset: int, data: bytes | memoryview, actual_steps: int
    ) -> None:
        """Take one part of a block; submit the block when it is whole."""
        self.touch()
        assembly = self._assembly
        if assembly is None or assembly.header != header:
            if assembly is not None:
                raise InvalidArgumentError(
                    f"block {assembly.header.block} ended after {assembly.received} of "
                    f"{assembly.header.total_bytes} bytes"
                )
            self._check_header(header)
            if offset != 0:  # refused before a buffer is made for it
                raise InvalidArgumentError(f"block {header.block} starts at byte {offset}, not 0")
            if len(data) == header.total_bytes:
                self._submit(header, data, actual_steps)  # the common case: no copy
                return
            assembly = self._assembly = _Assembly(header, np.empty(header.total_bytes, np.uint8))
        if offset != assembly.received or offset + len(data) > header.total_bytes:
            raise InvalidArgumentError(
                f"block {header.block}: part at byte {offset} ({len(data)} bytes) does not "
                f"continue the {assembly.received} bytes received of {header.total_bytes}"
            )
        assembly.buffer[offset : offset + len(data)] = np.frombuffer(data, np.uint8)
        assembly.received += len(data)
        if assembly.received == header.total_bytes:
            self._assembly = None
            self._submit(header, assembly.buffer.data, actual_steps)

    def drop_assembly(self) -> None:
        """Free a block left half-received (its writer is gone)."""
        self._assembly = None

    def _check_header(self, header: BlockHeader) -> None:
        groups = self.spec.groups
        if header.block != self._last_block + 1:
            raise InvalidArgumentError(
                f"block {header.block} arrived after block {self._last_block}"
            )
        if not 0 <= header.group < len(groups):
            raise FrameMismatchError(f"unknown group {header.group}; the run has {len(groups)}")
        group = groups[header.group]
        if header.start < 0 or header.count < 1:
            raise FrameMismatchError(f"{group.name}: a block needs start >= 0 and count >= 1")
        if header.start + header.count > layout.MAX_FRAMES:
            raise StepOrderError(
                f"{group.name}: frames up to {header.start + header.count - 1}; a group holds "
                f"frames 0 to {layout.MAX_FRAMES - 1}"
            )
        if not group.time_axis and (header.start != 0 or header.count != 1):
            raise FrameMismatchError(f"{group.name} has no time axis: it holds one frame")
        if header.start < self._next_frame[header.group]:
            raise StepOrderError(
                f"{group.name}: frames go backwards (index {header.start} after "
                f"{self._next_frame[header.group] - 1}) within one session"
            )
        expected = header.count * self._frame_bytes[header.group]
        if header.total_bytes != expected:
            raise FrameMismatchError(
                f"{group.name}: {header.count} frame(s) are {expected} bytes, "
                f"the block declares {header.total_bytes}"
            )
        if expected > self.max_block_bytes and header.count > 1:
            raise ResourceExhaustedError(
                f"{group.name}: blocks of more than {self.max_block_bytes} bytes must hold "
                f"one frame"
            )

    def _submit(
        self, header: BlockHeader, payload: bytes | bytearray | memoryview, actual_steps: int
    ) -> None:
        group = self.spec.groups[header.group]
        leaves = []
        offset = 0
        for leaf in group.leaves:
            n = header.count * math.prod(leaf.shape)
            nbytes = n * leaf.np_dtype.itemsize
            if nbytes:
                array = np.frombuffer(payload, dtype=leaf.np_dtype, count=n, offset=offset)
            else:
                array = np.zeros(0, leaf.np_dtype)
            leaves.append(array.reshape((header.count, *leaf.shape)))
            offset += nbytes
        self._last_block = header.block
        self._next_frame[header.group] = header.start + header.count
        with self._changed:
            if header.start < self.ack.frames[header.group]:
                # A rewrite (a resend after a reconnect, or a restart from a
                # checkpoint) shortens the group first: readers must not see the
                # frames it replaces until the new ones are durable.
                self._rewinds.append((header.block, header.group, header.start))
                visible = list(self.ack.frames)
                visible[header.group] = header.start
                self.ack = Ack(self.ack.block, tuple(visible))
                if not self.resend:  # new frames replace stored ones: a new version
                    self.generation += 1
                    self._generations.append((self.generation, header.group, header.start))
                    self.writer.file.announce_generation(self.generation)
        if self.metrics is not None:
            self.metrics.frames_received.inc(header.count)
            self.metrics.bytes_received.inc(len(payload))
        self.writer.set_actual_steps(max(actual_steps, 0))
        self._submitting += 1
        try:
            self.writer.submit_block(
                header.group, header.start, header.count, leaves, tag=header.block
            )
        finally:
            self._submitting -= 1
            self.touch()


class RunRegistry:
    """The runs open for writing, and who holds each."""

    def __init__(self, config: ServerConfig, files: RunFiles, metrics: Metrics | None = None):
        self.config = config
        self.files = files
        files.written_here = self.is_open
        self.metrics = metrics
        #: The gRPC health service, set by ``create_server``.
        self.health: Any = None
        self._lock = threading.Condition()  # notified when a closing writer has closed
        self._by_run: dict[str, WriterSession] = {}
        self._by_id: dict[str, WriterSession] = {}
        self._opening: set[str] = set()
        # Runs whose writer is still flushing after it was forgotten (its
        # frame count is not final yet), and how many such writers each has.
        self._closing: Counter[str] = Counter()
        # Every run's whole chunks are compressed on these threads (store/stored.py).
        self._chunk_pool = ThreadPoolExecutor(
            max_workers=config.compress_threads, thread_name_prefix="trajstore-compress"
        )
        self._stopping = False  # close_all began: no run opens any more
        self._reaper = threading.Thread(target=self._reap, name="trajstore-reaper", daemon=True)
        self._reaper.start()

    @property
    def reap_interval(self) -> float:
        """Seconds between two looks for sessions whose lease ran out."""
        return min(max(self.config.lease_seconds / 4, 0.05), 5.0)

    def _reap(self) -> None:
        """Close sessions whose writer was not heard from for a lease, until shutdown.

        A writer that vanished (killed, its host gone) keeps nothing: its run
        is closed with every durable frame, counts no more against
        ``max_open_runs``, its followers see the run end, and the memory of
        a block it left half-sent is freed.
        """
        with self._lock:
            while not self._stopping:
                self._lock.wait(self.reap_interval)
                expired = [
                    s
                    for s in list(self._by_id.values())
                    if s.idle_seconds() >= self.config.lease_seconds and self._forget(s)
                ]
                if not expired:
                    continue
                self._lock.release()
                try:
                    for session in expired:
                        session.drop_assembly()
                        self._close_forgotten(session, "lease expired")
                finally:
                    self._lock.acquire()

    def open(self, run: str, mode: OpenMode, spec: RunSpec, *, takeover: str = "") -> WriterSession:
        """Open ``run`` for one writer; :class:`RunLockedError` if another holds it.

        ``takeover`` names the caller's own previous session (a writer that
        reconnects): if it still holds the run, it is closed and replaced.
        """
        path = run_path(self.config.data_dir, run)
        check_schema(spec, self.config.limits)
        deadline = time.monotonic() + OPEN_WAIT_SECONDS
        expired = None
        with self._lock:
            self._refuse_if_stopping()
            # A writer still closing the run (its final flush) has the file open: wait for it.
            if not self._lock.wait_for(lambda: run not in self._closing, OPEN_WAIT_SECONDS):
                raise RunLockedError(f"run {run!r} is still being closed by its last writer")
            held = self._by_run.get(run)
            live = held is not None and held.idle_seconds() < self.config.lease_seconds
            mine = held is not None and bool(takeover) and held.id == takeover
            if run in self._opening:
                raise RunLockedError(f"run {run!r} is being opened by another writer")
            if live and not mine and held is not None:
                raise RunLockedError(self._held_message(run, held))
            open_runs = len(self._by_run) - (held is not None)  # held is replaced
            if open_runs + len(self._opening) >= self.config.limits.max_open_runs:
                raise ResourceExhaustedError(
                    f"{open_runs} runs are open; this server allows "
                    f"{self.config.limits.max_open_runs}"
                )
            if held is not None and self._forget(held):  # after the check: it gets closed
                expired = held
            self._opening.add(run)  # reserved: files are opened outside the lock
        try:
            if expired is not None:
                why = "taken over" if expired.id == takeover else "lease expired"
                self._close_forgotten(expired, why)
            session = self._create(
                run, path, mode, spec, deadline - time.monotonic(), resend=bool(takeover)
            )
            with self._lock:
                stopping = self._stopping
                if not stopping:
                    self._by_run[run] = session
                    self._by_id[session.id] = session
            if stopping:  # shutdown began while the file was opened: close it cleanly
                _close_logged(session, "store shutting down")
                self._refuse_if_stopping()
            return session
        finally:
            with self._lock:
                self._opening.discard(run)
                self._lock.notify_all()

    def _held_message(self, run: str, held: WriterSession) -> str:
        """Why ``run`` is refused: who holds it, and when that hold lapses if its writer is gone."""
        idle = held.idle_seconds()
        left = max(self.config.lease_seconds - idle, 0.0)
        at = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + left))
        return (
            f"run {run!r} is being written by another writer (last heard from {idle:.0f} s "
            f"ago); if that writer is gone, its hold lapses {self.config.lease_seconds:g} s "
            f"after its last message: try again in {left:.0f} s (at {at})"
        )

    def _refuse_if_stopping(self) -> None:
        if self._stopping:
            raise UnavailableError("the store is shutting down; try again (another store)")

    def _create(
        self, run: str, path: Path, mode: OpenMode, spec: RunSpec, wait: float, *, resend: bool
    ) -> WriterSession:
        """Open the run's file (waiting up to ``wait`` s for reads of it to end)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.files.writing(run, timeout=max(wait, 0.0)):
                file = open_run_writer(path, spec, mode=mode, chunk_pool=self._chunk_pool)
        except RunLockedError as e:
            if not e.holder:  # being read in this store: the message names the run
                raise
            raise RunLockedError(
                f"run {run!r} is being written by {e.holder}; if that writer is gone, its "
                f"store lets go of the run when its lease runs out ({self.config.lease_seconds:g} "
                f"s here after its last message)"
            ) from None
        except RunExistsError:
            raise RunExistsError(
                f"run {run!r} already exists (open it with mode 'overwrite' or 'append')"
            ) from None
        except RunNotFoundError:
            raise RunNotFoundError(f"no run {run!r} to append to") from None
        holder: list[WriterSession] = []
        writer = BackgroundWriter(
            file,
            max_pending_bytes=self.config.limits.max_pending_bytes_per_run,
            flush_interval=self.config.flush_interval,
            flush_bytes=self.config.flush_bytes,
            on_flush=lambda frames, tag: holder[0].on_flush(frames, tag) if holder else None,
            on_error=lambda error: holder[0].wake() if holder else None,
        )
        session = WriterSession(
            id=secrets.token_hex(16),
            run=run,
            spec=file.spec,
            writer=writer,
            max_block_bytes=self.config.limits.max_frame_bytes,
            metrics=self.metrics,
            resend=resend,
        )
        holder.append(session)
        return session

    def is_open(self, run: str) -> bool:
        """Whether a writer holds ``run`` (or is opening it, or still closing it)."""
        with self._lock:
            return run in self._by_run or run in self._opening or run in self._closing

    def is_written(self, run: str) -> bool:
        """Whether a writer holds ``run`` now: here, or in another process (its lock)."""
        if self.is_open(run):
            return True
        try:
            return is_locked(run_path(self.config.data_dir, run))
        except TrajstoreError:  # a name that is no run here
            return False

    def session_for(self, run: str) -> WriterSession | None:
        """The session writing ``run``, if one is open."""
        with self._lock:
            return self._by_run.get(run)

    def get(self, session_id: str) -> WriterSession:
        """The open session ``session_id``."""
        with self._lock:
            session = self._by_id.get(session_id)
        if session is None:
            raise FailedPreconditionError("no open writer session with that id (closed or expired)")
        return session

    def close(self, session_id: str, actual_steps: int | None = None) -> Ack:
        """Flush and close a session's run; return the final acknowledgement."""
        session = self.get(session_id)
        if actual_steps is not None:
            session.writer.set_actual_steps(actual_steps)
        with self._lock:
            forgotten = self._forget(session)
        try:
            session.writer.close()
        finally:
            session.closed = True
            session.wake()
            if forgotten:
                self._closed(session)
        return Ack(session.ack.block, tuple(session.writer.durable_frames))

    def _forget(self, session: WriterSession) -> bool:
        """Drop a session that is about to be closed (call with the lock held).

        Returns whether it was still registered: then the caller closes it
        and reports that with :meth:`_closed`.
        """
        if self._by_run.get(session.run) is session:
            del self._by_run[session.run]
        if self._by_id.pop(session.id, None) is None:
            return False  # someone else is closing it
        self._closing[session.run] += 1
        return True

    def _closed(self, session: WriterSession) -> None:
        """A forgotten session's writer has closed: its run's frames are final."""
        with self._lock:
            self._closing[session.run] -= 1
            if self._closing[session.run] <= 0:
                del self._closing[session.run]
                self._lock.notify_all()

    def _close_forgotten(self, session: WriterSession, why: str) -> None:
        try:
            _close_logged(session, why)
        finally:
            self._closed(session)

    def close_all(self) -> None:
        """Flush and close every open run (server shutdown).

        Runs being opened meanwhile are waited for (they close themselves
        once they see the shutdown), so that no file is left open for writing.
        """
        with self._lock:
            self._stopping = True
            self._lock.notify_all()  # the reaper ends
            if not self._lock.wait_for(lambda: not self._opening, OPEN_WAIT_SECONDS * 2):
                log.error("runs still opening at shutdown: %s", sorted(self._opening))
            sessions = [s for s in list(self._by_id.values()) if self._forget(s)]
        for session in sessions:
            self._close_forgotten(session, "closing at shutdown")
        self._chunk_pool.shutdown(wait=False)

    @property
    def open_runs(self) -> int:
        """Runs open for writing now."""
        return len(self._by_run)

    def queued_bytes(self) -> int:
        """Bytes received and not yet written, over every open run."""
        with self._lock:
            sessions = list(self._by_run.values())
        return sum(s.writer.pending_bytes for s in sessions)

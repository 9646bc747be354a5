"""The query service: list and describe runs, read slices, follow live runs."""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence

import grpc
import numpy as np

from trajstore import bounds, errors, wire
from trajstore.blockcodec import OutgoingArrays, OutgoingPart, byte_view, split_views
from trajstore.read_ahead import read_ahead
from trajstore.server.catalog import RunCatalog, RunSummary
from trajstore.server.run_version import RunVersion
from trajstore.server.sessions import RunRegistry, WriterSession
from trajstore.server.status import abort_with, typed_errors
from trajstore.store.indexing import Plan
from trajstore.store.reader import RunFileReader
from trajstore.v1 import query_pb2 as qpb
from trajstore.v1 import query_pb2_grpc as qpb_grpc

__all__ = ["QueryServicer"]

log = logging.getLogger("trajstore.server")

#: Runs per ListRuns page unless the caller asks for fewer; the most it may ask for.
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 10_000


class _OtherWriter:
    """Whether a run followed here is still written by another process.

    It is while another process holds the run's lock. A file left open with
    its lock free was left by a writer that died (a store killed with its
    sessions): its client reconnects to another store, which takes the lock
    and goes on, so a follower waits for that up to a lease before it takes
    the run as closed.
    """

    def __init__(self, registry: RunRegistry) -> None:
        self.registry = registry
        self._free_since: float | None = None

    def still_written(self, run: str, left_open: bool) -> bool:
        if self.registry.is_written(run):
            self._free_since = None
            return True
        if not left_open:
            return False
        now = time.monotonic()
        if self._free_since is None:
            self._free_since = now
        return now - self._free_since < self.registry.config.lease_seconds


class QueryServicer(qpb_grpc.QueryServiceServicer):
    """Serves reads of any run, also of runs still being written.

    Reads of a run being written see exactly the frames acknowledged to its
    writer: the durable ones, never a partial or preallocated frame.

    Args:
        registry: The open runs (their acknowledged frames bound reads).
        part_bytes: Largest data part per response message.
        read_chunk_bytes: Largest piece of a result held in memory at once.
        poll_interval: Longest wait between checks of a followed run.
        fetch_streams: FetchStream calls open at once (each holds a thread
            while it lasts); beyond them clients use Fetch.
    """

    def __init__(
        self,
        registry: RunRegistry,
        *,
        part_bytes: int = 4 << 20,
        read_chunk_bytes: int = 16 << 20,
        poll_interval: float = 1.0,
        fetch_streams: int = 16,
    ) -> None:
        self.registry = registry
        self.files = registry.files
        self.catalog = RunCatalog(registry.files)
        #: Bytes of run descriptions per ListRuns page: well under the message limit.
        self.page_bytes = max(part_bytes // 2, 1)
        self.data_dir = registry.config.data_dir
        self.part_bytes = part_bytes
        self.read_chunk_bytes = read_chunk_bytes
        self.poll_interval = poll_interval
        self.fetch_streams = fetch_streams
        self._fetch_streams = threading.BoundedSemaphore(fetch_streams)

    def _count_read(self, nbytes: int) -> None:
        if self.registry.metrics is not None:
            self.registry.metrics.bytes_read.inc(nbytes)

    # ------------------------------------------------------------- listing

    def _frames(
        self, reader: RunFileReader, session: WriterSession | None
    ) -> tuple[list[int], int]:
        """Frames per group that reads see, and their generation, taken together."""
        if session is not None and not session.closed:
            ack, generation = session.view()
            return list(ack.frames), generation
        frames = [reader.frames(i) for i in range(len(reader.spec.groups))]
        return frames, reader.generation()

    def _view(self, reader: RunFileReader, run: str, group: int) -> tuple[int, int]:
        """Frames of a group that reads see, and the generation they belong to, taken together.

        With a writer, the frames acknowledged to it.
        """
        session = self.registry.session_for(run)
        if session is not None and not session.closed:
            ack, generation = session.view()
            return ack.frames[group], generation
        # Without a writer the count is kept with the handle: a writer opening
        # the run waits for the reads holding this handle, then drops it
        # (RunFiles.writing), so the count cannot change under its copy.
        cached = not self.registry.is_open(run)
        return reader.frames(group, cached=cached), reader.generation(cached=cached)

    @contextlib.contextmanager
    def _pinned(
        self, reader: RunFileReader, run: str, group: int, generation: int
    ) -> Iterator[int]:
        """The frames a read of ``group`` sees, if the run is at ``generation`` (0: any).

        Checked again when the read ends (its frames may have been rewritten
        while it read them): :class:`RunChangedError` then too.
        """
        expected = generation or None
        frames, now = self._view(reader, run, group)
        self._pin(reader, run, group, expected, now)
        with self._pinned_read(reader, run, group, expected):
            yield frames

    def _pin(
        self, reader: RunFileReader, run: str, group: int, expected: int | None, now: int
    ) -> int:
        """``now`` if reads of ``group`` pinned to generation ``expected`` may go on.

        They may if ``expected`` is ``None`` (any) or ``now``, or if the run's
        writer went from ``expected`` to ``now`` without rewriting this group's
        frames.

        Raises:
            RunChangedError: The run was replaced, or this group rewound since.
        """
        if expected is None or expected == now:
            return now
        session = self.registry.session_for(run)
        known, first = (False, None)
        if session is not None:
            known, first = session.rewound_since(expected, group)
            if known and first is None:
                return now  # other groups were rewritten; this one's frames are the same
        name = reader.spec.groups[group].name
        where = (
            f"{name} differs from frame {first} on"
            if first is not None
            else "it was replaced or rewound (from which frame is not known here)"
        )
        raise errors.RunChangedError(
            f"run {run!r} changed while it was read: generation {expected} is now {now}; {where}",
            old_generation=expected,
            new_generation=now,
            rewind_frame=first,
        )

    def _info(self, run: str, summary: RunSummary) -> qpb.RunInfo:
        if summary.problem:
            state = qpb.RUN_STATE_DAMAGED
        elif self.registry.is_written(run):
            state = qpb.RUN_STATE_OPEN
        else:
            state = qpb.RUN_STATE_CLOSED
        frames: Sequence[int] = summary.frames
        session = self.registry.session_for(run)
        generation = summary.generation
        if session is not None and not session.closed and not summary.problem:
            ack, generation = session.view()
            frames = ack.frames
        return qpb.RunInfo(
            name=run,
            state=state,
            groups=[
                qpb.GroupStatus(name=g, frames=n)
                for g, n in zip(summary.groups, frames, strict=True)
            ],
            size_bytes=summary.size_bytes,
            metadata_json=summary.metadata_json,
            created_unix=summary.created if summary.created is not None else summary.updated,
            updated_unix=summary.updated,
            actual_steps=summary.actual_steps,
            problem=summary.problem,
            generation=generation,
        )

    @typed_errors
    def ListRuns(  # noqa: N802 (gRPC method name)
        self, request: qpb.ListRunsRequest, context: grpc.ServicerContext
    ) -> qpb.ListRunsResponse:
        """One page of the runs (optionally under a prefix), with their frames and state.

        A run that cannot be read is listed as damaged, with its problem: one
        bad run never fails the call.
        """
        if request.page_size > MAX_PAGE_SIZE:
            raise errors.InvalidArgumentError(
                f"pages hold at most {MAX_PAGE_SIZE} runs, not {request.page_size}"
            )
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        names = self.catalog.names(request.prefix)
        names = names[bisect.bisect_right(names, request.page_token) :]
        response = qpb.ListRunsResponse()
        size = 0
        for name, summary in self.catalog.iter_summaries(names):
            if len(response.runs) == page_size:
                response.next_page_token = response.runs[-1].name
                break
            info = self._info(name, summary)
            if info.ByteSize() > self.page_bytes:  # alone too big: its metadata stays out
                info.metadata_json = ""
                info.problem = info.problem or (
                    f"metadata of {len(summary.metadata_json)} bytes left out of the listing: "
                    f"it passes the message limit ({self.page_bytes} bytes)"
                )
            if response.runs and size + info.ByteSize() > self.page_bytes:
                response.next_page_token = response.runs[-1].name
                break
            response.runs.append(info)
            size += info.ByteSize() + 16  # with the field's tag and length
        return response

    @typed_errors
    def DescribeRun(  # noqa: N802 (gRPC method name)
        self, request: qpb.DescribeRunRequest, context: grpc.ServicerContext
    ) -> qpb.DescribeRunResponse:
        """A run's schema and state."""
        with self.files.reading(request.run) as reader:
            schema = wire.schema_to_proto(reader.spec)
        summary = self.catalog.summary(request.run)
        if summary.problem:
            raise errors.RunDamagedError(f"run {request.run!r}: {summary.problem}")
        return qpb.DescribeRunResponse(info=self._info(request.run, summary), schema=schema)

    # ------------------------------------------------------------- reading

    def _leaves(self, reader: RunFileReader, group: int, wanted: Sequence[int]) -> list[int]:
        """The leaf positions a request names (none: all), each at most once."""
        count = len(reader.spec.groups[group].leaves)
        leaves = list(wanted) if wanted else list(range(count))
        for leaf in leaves:  # stops at the first bad one, however long the list
            if leaf >= count:
                raise errors.InvalidArgumentError(
                    f"{reader.spec.groups[group].name} has {count} leaves; no leaf {leaf}"
                )
        if len(set(leaves)) != len(leaves):
            raise errors.InvalidArgumentError("a read names each leaf at most once")
        return leaves

    @staticmethod
    def _result_bytes(
        reader: RunFileReader, group: int, leaves: Sequence[int], plans: Sequence[Plan]
    ) -> int:
        specs = reader.spec.groups[group].leaves
        return sum(
            math.prod(plan.shape) * specs[leaf].np_dtype.itemsize
            for plan, leaf in zip(plans, leaves, strict=True)
        )

    def Read(  # noqa: N802 (gRPC method name)
        self, request: qpb.ReadRequest, context: grpc.ServicerContext
    ) -> Iterator[qpb.ReadResponse | OutgoingPart]:
        """``array[index]`` of chosen leaves of a group, streamed in parts.

        The run's handle is held while a piece is read, never while one is
        sent, so a slow reader does not keep a writer from reopening the run
        (one that reconnects, say). A read of several pieces takes the handle
        again for each and checks that the run is still the version it
        planned on (:class:`RunVersion`); if not, it ends with
        FailedPreconditionError rather than mix two versions.
        """
        if self.registry.metrics is not None:
            self.registry.metrics.read_requests.inc()
        try:
            run = request.run
            index = wire.index_from_proto(request.index, request.index_is_tuple)
            with self.files.reading(run) as reader:
                group = reader.group_index(request.group)
                frames, generation = self._view(reader, run, group)
                pinned = self._pin(reader, run, group, request.generation or None, generation)
                leaves = self._leaves(reader, group, request.leaves)
                plans = [reader.plan(group, leaf, index, frames) for leaf in leaves]
                version = RunVersion.of(run, reader)
                pieces: Iterator[tuple[int, np.ndarray]]
                several = self._result_bytes(reader, group, leaves, plans) > self.read_chunk_bytes
                if several:
                    planned = [
                        (position, leaf, piece)
                        for position, (leaf, plan) in enumerate(zip(leaves, plans, strict=True))
                        for piece in reader.piece_plans(group, leaf, plan, self.read_chunk_bytes)
                    ]
                else:  # one piece per leaf, read now under this handle
                    with self._pinned_read(reader, run, group, pinned):
                        pieces = iter(
                            [
                                (position, reader.read_piece(group, leaf, plan, frames=frames))
                                for position, (leaf, plan) in enumerate(
                                    zip(leaves, plans, strict=True)
                                )
                            ]
                        )
            yield qpb.ReadResponse(
                results=[qpb.LeafResult(shape=p.shape, scalar=p.scalar) for p in plans]
            )
            if several:  # read one piece while the last is sent
                pieces = read_ahead(self._read_pieces(version, group, frames, planned, pinned))
            offsets = [0] * len(leaves)
            for position, piece in pieces:
                for at, views in split_views([piece], self.part_bytes):
                    self._count_read(sum(len(v) for v in views))
                    header = qpb.ReadResponse(leaf=position, offset=offsets[position] + at)
                    yield OutgoingPart(header, views)
                offsets[position] += piece.nbytes
        except Exception as e:
            abort_with(context, e)

    def _read_pieces(
        self,
        version: RunVersion,
        group: int,
        frames: int,
        planned: Sequence[tuple[int, int, Plan]],
        generation: int,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Each planned ``(position, leaf, plan)`` read under the run's handle, yielded after.

        Raises:
            RunChangedError: The run is no longer at ``generation``.
            FailedPreconditionError: The run changed otherwise since the read
                was planned (see :class:`RunVersion`).
        """
        for position, leaf, plan in planned:
            with self.files.reading(version.run) as reader:
                now, current = self._view(reader, version.run, group)
                self._pin(reader, version.run, group, generation, current)
                version.check(reader, frames_now=now, frames_planned=frames)
                with self._pinned_read(reader, version.run, group, generation):
                    piece = reader.read_piece(group, leaf, plan, frames=frames)
            yield position, piece

    @contextlib.contextmanager
    def _pinned_read(
        self, reader: RunFileReader, run: str, group: int, generation: int | None
    ) -> Iterator[None]:
        """Reading ``group`` at ``generation``: checked again when the read ends.

        Its frames may have been rewritten while it read them: then
        :class:`RunChangedError` (also when the read failed for it).
        """
        try:
            yield
        except errors.FailedPreconditionError:  # raced a rewrite: say why, if it changed
            self._pin(reader, run, group, generation, self._view(reader, run, group)[1])
            raise
        self._pin(reader, run, group, generation, self._view(reader, run, group)[1])

    def _fetch(self, read: qpb.ReadRequest) -> tuple[list[qpb.LeafResult], list[memoryview]]:
        """``array[index]`` of chosen leaves, as one message holds them (Fetch, FetchStream).

        Returns the results' shapes and views of their bytes, for
        :class:`~trajstore.blockcodec.OutgoingArrays`.
        """
        if self.registry.metrics is not None:
            self.registry.metrics.read_requests.inc()
        index = wire.index_from_proto(read.index, read.index_is_tuple)
        with (
            self.files.reading(read.run) as reader,
            self._pinned(
                reader, read.run, reader.group_index(read.group), read.generation
            ) as frames,
        ):
            group = reader.group_index(read.group)
            leaves = self._leaves(reader, group, read.leaves)
            plans = [reader.plan(group, leaf, index, frames) for leaf in leaves]
            total = self._result_bytes(reader, group, leaves, plans)
            if total > self.part_bytes:
                raise errors.ResourceExhaustedError(
                    f"{total} bytes do not fit one message ({self.part_bytes}): use Read"
                )
            arrays = reader.read_plans(group, leaves, plans, frames=frames)
        self._count_read(total)
        results = [qpb.LeafResult(shape=plan.shape, scalar=plan.scalar) for plan in plans]
        return results, [byte_view(array) for array in arrays]

    @typed_errors
    def Fetch(  # noqa: N802 (gRPC method name)
        self, request: qpb.FetchRequest, context: grpc.ServicerContext
    ) -> OutgoingArrays:
        """``array[index]`` of chosen leaves in one message (a frame, a few frames)."""
        results, data = self._fetch(request.read)
        return OutgoingArrays(qpb.FetchResponse(results=results), data)

    def FetchStream(  # noqa: N802 (gRPC method name)
        self, requests: Iterator[qpb.FetchStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[OutgoingArrays]:
        """Fetch for each request of one long-lived call; the first error ends it."""
        if not self._fetch_streams.acquire(blocking=False):
            context.abort(  # no error class: the client falls back to Fetch
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this store serves {self.fetch_streams} fetch streams at once: use Fetch",
            )
        try:
            for request in requests:
                results, data = self._fetch(request.read)
                yield OutgoingArrays(qpb.FetchStreamResponse(results=results), data)
        except Exception as e:
            if context.is_active():  # not the client leaving
                abort_with(context, e)
        finally:
            self._fetch_streams.release()

    def Follow(  # noqa: N802 (gRPC method name)
        self, request: qpb.FollowRequest, context: grpc.ServicerContext
    ) -> Iterator[qpb.FollowResponse | OutgoingPart]:
        """Frames of a group from ``start`` on, as they become durable, until the run closes."""
        if self.registry.metrics is not None:
            self.registry.metrics.read_requests.inc()
        try:
            if not 0 <= request.start <= bounds.MAX_FRAMES:  # a group holds MAX_FRAMES frames
                raise errors.FrameIndexError(
                    f"follow starts at a frame index in [0, {bounds.MAX_FRAMES}], "
                    f"not {request.start}"
                )
            with self.files.reading(request.run) as reader:
                group = reader.group_index(request.group)
                spec = reader.spec.groups[group]
                if not spec.time_axis:
                    raise errors.InvalidArgumentError(f"{spec.name} has no time axis to follow")
                leaves = self._leaves(reader, group, request.leaves)
            frame_bytes = max(sum(spec.leaves[i].frame_nbytes for i in leaves), 1)
            per_batch = max(1, self.read_chunk_bytes // frame_bytes)
            next_frame = request.start
            # The generation followed: checked before and after every batch read.
            pinned: int | None = request.generation or None
            elsewhere = _OtherWriter(self.registry)
            while context.is_active():
                session = self.registry.session_for(request.run)
                acked = session.ack if session is not None else None
                # A batch is read under the run's handle and sent after it is let go:
                # a slow follower never keeps a writer from reopening the run.
                with self.files.reading(request.run) as reader:
                    if reader.spec.groups[group : group + 1] != (spec,):
                        now = self._frames(reader, self.registry.session_for(request.run))[1]
                        raise errors.RunChangedError(
                            f"run {request.run!r} was replaced by one with other groups",
                            old_generation=pinned or 0,
                            new_generation=now,
                        )
                    left_open = reader.left_open
                    available, now = self._view(reader, request.run, group)
                    pinned = self._follow_pin(reader, request.run, group, pinned, now, next_frame)
                    count = min(per_batch, available - next_frame)
                    if count > 0:
                        batch = slice(next_frame, next_frame + count)
                        try:
                            pieces = reader.read(group, leaves, batch, frames=available)
                        except errors.FailedPreconditionError:  # raced a rewrite: why?
                            now = self._view(reader, request.run, group)[1]
                            self._follow_pin(reader, request.run, group, pinned, now, batch.stop)
                            raise
                        now = self._view(reader, request.run, group)[1]
                        pinned = self._follow_pin(
                            reader, request.run, group, pinned, now, batch.stop
                        )
                if count > 0:
                    yield from self._follow_parts(next_frame, count, pieces)
                    next_frame += count
                    continue
                if session is not None and acked is not None:
                    session.wait_for_ack(acked, self.poll_interval, stop=lambda: False)
                elif elsewhere.still_written(request.run, left_open):
                    # New frames show in the file at the writer's flushes.
                    time.sleep(min(self.poll_interval, self.registry.config.flush_interval))
                else:
                    return  # closed, and everything was sent
        except Exception as e:
            abort_with(context, e)

    def _follow_pin(
        self,
        reader: RunFileReader,
        run: str,
        group: int,
        pinned: int | None,
        now: int,
        seen_until: int,
    ) -> int:
        """:meth:`_pin` for a follower that has frames up to ``seen_until`` (excluded).

        A rewind at or past them changes nothing the follower has: it goes on
        with the new generation.
        """
        try:
            return self._pin(reader, run, group, pinned, now)
        except errors.RunChangedError as e:
            if e.rewind_frame is not None and e.rewind_frame >= seen_until:
                return now
            raise

    def _follow_parts(
        self, first: int, count: int, pieces: Sequence[np.ndarray]
    ) -> Iterator[qpb.FollowResponse | OutgoingPart]:
        """Frames ``[first, first + count)`` of the followed leaves, in parts."""
        for position, piece in enumerate(pieces):
            total = piece.nbytes
            for at, views in split_views([piece], self.part_bytes):
                self._count_read(sum(len(v) for v in views))
                header = qpb.FollowResponse(
                    start=first, count=count, leaf=position, offset=at, total_bytes=total
                )
                yield OutgoingPart(header, views)

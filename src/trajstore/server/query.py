"""The query service: list and describe runs, read slices, follow live runs."""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np

from trajstore import errors, wire
from trajstore.blockcodec import OutgoingArrays, OutgoingPart, byte_view, split_views
from trajstore.read_ahead import read_ahead
from trajstore.server.names import validate_run_name
from trajstore.server.run_version import RunVersion
from trajstore.server.sessions import RunRegistry, WriterSession
from trajstore.server.status import abort_with, typed_errors
from trajstore.store.indexing import Plan
from trajstore.store.reader import RunFileReader
from trajstore.v1 import query_pb2 as qpb
from trajstore.v1 import query_pb2_grpc as qpb_grpc

__all__ = ["QueryServicer"]

log = logging.getLogger("trajstore.server")


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

    def _frames(self, reader: RunFileReader, session: WriterSession | None) -> list[int]:
        if session is not None and not session.closed:
            return list(session.ack.frames)
        return [reader.frames(i) for i in range(len(reader.spec.groups))]

    def _group_frames(self, reader: RunFileReader, run: str, group: int) -> int:
        """Frames of a group that reads see: those acknowledged to its writer, if any."""
        session = self.registry.session_for(run)
        if session is not None and not session.closed:
            return session.ack.frames[group]
        # Without a writer the count is kept with the handle: a writer opening
        # the run waits for the reads holding this handle, then drops it
        # (RunFiles.writing), so the count cannot change under its copy.
        return reader.frames(group, cached=not self.registry.is_open(run))

    def _info(self, run: str, reader: RunFileReader) -> qpb.RunInfo:
        session = self.registry.session_for(run)
        path = reader.path
        stat = path.stat()
        created = reader.created
        return qpb.RunInfo(
            name=run,
            state=qpb.RUN_STATE_OPEN if self.registry.is_open(run) else qpb.RUN_STATE_CLOSED,
            groups=[
                qpb.GroupStatus(name=g.name, frames=n)
                for g, n in zip(reader.spec.groups, self._frames(reader, session), strict=True)
            ],
            size_bytes=stat.st_size,
            metadata_json=reader.spec.metadata_json,
            created_unix=created if created is not None else stat.st_mtime,
            updated_unix=stat.st_mtime,
            actual_steps=reader.actual_steps,
        )

    def _run_names(self, prefix: str) -> list[str]:
        names = []
        root = self.data_dir.resolve()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for filename in sorted(filenames):
                if not filename.endswith(".h5"):
                    continue
                name = (Path(dirpath) / filename).relative_to(root).as_posix()[: -len(".h5")]
                try:
                    validate_run_name(name)
                except errors.InvalidRunNameError:
                    continue  # not a file the store wrote
                if name.startswith(prefix):
                    names.append(name)
        return names

    @typed_errors
    def ListRuns(  # noqa: N802 (gRPC method name)
        self, request: qpb.ListRunsRequest, context: grpc.ServicerContext
    ) -> qpb.ListRunsResponse:
        """Every run (optionally under a prefix), with its frames and state."""
        runs = []
        for name in self._run_names(request.prefix):
            try:
                with self.files.reading(name) as reader:
                    runs.append(self._info(name, reader))
            except (errors.SchemaError, errors.StorageError, errors.RunNotFoundError) as e:
                log.warning("listing %s: skipped (%s)", name, e)
        return qpb.ListRunsResponse(runs=runs)

    @typed_errors
    def DescribeRun(  # noqa: N802 (gRPC method name)
        self, request: qpb.DescribeRunRequest, context: grpc.ServicerContext
    ) -> qpb.DescribeRunResponse:
        """A run's schema and state."""
        with self.files.reading(request.run) as reader:
            return qpb.DescribeRunResponse(
                info=self._info(request.run, reader), schema=wire.schema_to_proto(reader.spec)
            )

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
                frames = self._group_frames(reader, run, group)
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
                    pieces = iter(
                        [
                            (position, reader.read_piece(group, leaf, plan, frames=frames))
                            for position, (leaf, plan) in enumerate(zip(leaves, plans, strict=True))
                        ]
                    )
            yield qpb.ReadResponse(
                results=[qpb.LeafResult(shape=p.shape, scalar=p.scalar) for p in plans]
            )
            if several:  # read one piece while the last is sent
                pieces = read_ahead(self._read_pieces(version, group, frames, planned))
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
        self, version: RunVersion, group: int, frames: int, planned: Sequence[tuple[int, int, Plan]]
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Each planned ``(position, leaf, plan)`` read under the run's handle, yielded after.

        Raises:
            FailedPreconditionError: The run changed since the read was
                planned (see :class:`RunVersion`).
        """
        for position, leaf, plan in planned:
            with self.files.reading(version.run) as reader:
                now = self._group_frames(reader, version.run, group)
                version.check(reader, frames_now=now, frames_planned=frames)
                piece = reader.read_piece(group, leaf, plan, frames=frames)
            yield position, piece

    def _fetch(self, read: qpb.ReadRequest) -> tuple[list[qpb.LeafResult], list[memoryview]]:
        """``array[index]`` of chosen leaves, as one message holds them (Fetch, FetchStream).

        Returns the results' shapes and views of their bytes, for
        :class:`~trajstore.blockcodec.OutgoingArrays`.
        """
        if self.registry.metrics is not None:
            self.registry.metrics.read_requests.inc()
        index = wire.index_from_proto(read.index, read.index_is_tuple)
        with self.files.reading(read.run) as reader:
            group = reader.group_index(read.group)
            frames = self._group_frames(reader, read.run, group)
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
            if request.start < 0:
                raise errors.FrameIndexError("follow starts at a frame index >= 0")
            with self.files.reading(request.run) as reader:
                group = reader.group_index(request.group)
                spec = reader.spec.groups[group]
                if not spec.time_axis:
                    raise errors.InvalidArgumentError(f"{spec.name} has no time axis to follow")
                leaves = self._leaves(reader, group, request.leaves)
            frame_bytes = max(sum(spec.leaves[i].frame_nbytes for i in leaves), 1)
            per_batch = max(1, self.read_chunk_bytes // frame_bytes)
            next_frame = request.start
            while context.is_active():
                session = self.registry.session_for(request.run)
                acked = session.ack if session is not None else None
                # A batch is read under the run's handle and sent after it is let go:
                # a slow follower never keeps a writer from reopening the run.
                with self.files.reading(request.run) as reader:
                    available = self._group_frames(reader, request.run, group)
                    count = min(per_batch, available - next_frame)
                    if count > 0:
                        batch = slice(next_frame, next_frame + count)
                        pieces = reader.read(group, leaves, batch, frames=available)
                if count > 0:
                    yield from self._follow_parts(next_frame, count, pieces)
                    next_frame += count
                    continue
                if session is None or acked is None:
                    return  # closed, and everything was sent
                session.wait_for_ack(acked, self.poll_interval, stop=lambda: False)
        except Exception as e:
            abort_with(context, e)

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

"""Reading runs on a store: ``connect``, ``RemoteStorageReader``, ``RemoteGroupReader``."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np

from trajstore import wire
from trajstore.blockcodec import IncomingArrays, IncomingPart, query_method
from trajstore.client.channel import ROUTING_HEADER, call_metadata, open_channel, route_key
from trajstore.client.fetch_stream import FetchStream
from trajstore.errors import (
    InvalidArgumentError,
    NotOpenError,
    ResourceExhaustedError,
    RunChangedError,
    StorageError,
)
from trajstore.read_ahead import read_ahead
from trajstore.reading import GroupReader, group_position, repeat_leaves
from trajstore.schema import GroupSpec, RunSpec
from trajstore.v1 import query_pb2 as qpb
from trajstore.v1 import query_pb2_grpc as qpb_grpc

__all__ = [
    "Client",
    "RemoteGroupReader",
    "RemoteLeaves",
    "RemoteStorageReader",
    "RunInfo",
    "connect",
]

#: Reads of one frame up to this size go in one Fetch round trip instead of a Read stream.
FETCH_BYTES = 4 << 20

T = TypeVar("T")

#: A one-message read's response (Fetch or FetchStream), its data as views.
Fetched = IncomingArrays[qpb.FetchResponse] | IncomingArrays[qpb.FetchStreamResponse]


@dataclass(frozen=True)
class RunInfo:
    """One run on the store, as ``Client.list_runs`` reports it.

    Attributes:
        name: Run name.
        open: Whether a writer holds it (its frames still grow).
        frames: Frames durable per group name.
        size_bytes: Size of the run file.
        metadata: User metadata.
        created: Creation time (Unix seconds).
        updated: Last modification (Unix seconds).
        actual_steps: Steps the writer reported so far.
        damaged: The run's file cannot be read (``problem`` says why); its
            other fields are empty.
        problem: Why a damaged run cannot be read, or a note on what the
            listing left out ('' if nothing).
        generation: The version of the run: new when it is created or
            overwritten, one more whenever a writer rewrites frames already
            stored (a restart from a checkpoint); ``0``: unknown (an older file).
    """

    name: str
    open: bool
    frames: dict[str, int]
    size_bytes: int
    metadata: dict[str, Any]
    created: float
    updated: float
    actual_steps: int
    damaged: bool = False
    problem: str = ""
    generation: int = 0

    @classmethod
    def from_proto(cls, info: qpb.RunInfo) -> RunInfo:
        """Build from the wire message."""
        return cls(
            name=info.name,
            open=info.state == qpb.RUN_STATE_OPEN,
            frames={g.name: int(g.frames) for g in info.groups},
            size_bytes=int(info.size_bytes),
            metadata=wire.metadata_from_json(info.metadata_json),
            created=info.created_unix,
            updated=info.updated_unix,
            actual_steps=int(info.actual_steps),
            damaged=info.state == qpb.RUN_STATE_DAMAGED,
            problem=info.problem,
            generation=int(info.generation),
        )


class _Calls:
    """One channel and the metadata every call carries; maps gRPC errors to ours."""

    def __init__(
        self,
        address: str,
        token: str | None,
        timeout: float | None,
        tls_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        self.address = address
        self.channel = open_channel(address, tls_ca)
        self.stub = qpb_grpc.QueryServiceStub(self.channel)  # type: ignore[no-untyped-call]
        # Read, Follow and Fetch results arrive as views of the received messages (blockcodec).
        self.read = query_method(self.channel, "Read")
        self.follow = query_method(self.channel, "Follow")
        self.fetch_unary = query_method(self.channel, "Fetch")
        self.metadata = call_metadata(token)
        self.timeout = timeout
        self.fetch_stream = FetchStream(self.channel, self.metadata, timeout=timeout)

    def _metadata_for(self, request: Any) -> tuple[tuple[str, str], ...]:
        """The call's metadata; a request about one run is routed to that run's store."""
        run = getattr(request, "run", "")
        if not run and isinstance(getattr(request, "read", None), qpb.ReadRequest):
            run = request.read.run
        return (*self.metadata, (ROUTING_HEADER, route_key(run))) if run else self.metadata

    def unary(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata_for(request))
        except grpc.RpcError as e:
            raise wire.error_from_rpc(e) from None

    def stream(
        self, method: Callable[..., Any], request: Any, *, timeout: float | None = None
    ) -> Iterator[Any]:
        try:
            yield from method(request, timeout=timeout, metadata=self._metadata_for(request))
        except grpc.RpcError as e:
            raise wire.error_from_rpc(e) from None

    def fetch(self, read: qpb.ReadRequest) -> Fetched:
        """A one-message read: on the open fetch stream if it can be used, else a Fetch call."""
        response = self.fetch_stream.fetch(read)
        if response is None:
            fetched: Fetched = self.unary(self.fetch_unary, qpb.FetchRequest(read=read))
            return fetched
        return response

    def close(self) -> None:
        self.fetch_stream.close()
        self.channel.close()


def _incomplete(what: str) -> StorageError:
    return StorageError(f"the store's answer was incomplete: {what}")


def _assemble(
    results: Sequence[qpb.LeafResult],
    dtypes: Sequence[np.dtype[Any]],
    parts: Iterator[IncomingPart[qpb.ReadResponse]],
) -> list[Any]:
    """The results of a Read from its parts, which must fill each leaf in order.

    Raises:
        StorageError: A part out of place, or a leaf not filled: never
            returns memory the store did not send.
    """
    if len(results) != len(dtypes):
        raise _incomplete(f"{len(results)} results for {len(dtypes)} leaves")
    arrays = [np.empty(tuple(r.shape), dtype) for r, dtype in zip(results, dtypes, strict=True)]
    raw = [a.reshape(-1).view(np.uint8) for a in arrays]
    received = [0] * len(raw)
    for part in parts:
        leaf, offset, size = part.fields.leaf, part.fields.offset, len(part.data)
        if leaf >= len(raw) or offset != received[leaf] or offset + size > raw[leaf].size:
            raise _incomplete(f"a part of leaf {leaf} at byte {offset} out of place")
        raw[leaf][offset : offset + size] = np.frombuffer(part.data, np.uint8)
        received[leaf] += size
    for leaf, (got, target) in enumerate(zip(received, raw, strict=True)):
        if got != target.size:
            raise _incomplete(f"{got} of {target.size} bytes of leaf {leaf}")
    return [a[()] if r.scalar else a for a, r in zip(arrays, results, strict=True)]


def _unpack(response: Fetched, dtypes: Sequence[np.dtype[Any]]) -> list[Any]:
    """The results of a Fetch (one message); :class:`StorageError` if they do not add up."""
    results, data = response.fields.results, response.data
    if not len(results) == len(data) == len(dtypes):
        raise _incomplete(f"{len(results)} results, {len(data)} arrays for {len(dtypes)} leaves")
    arrays = []
    for leaf, (result, buffer, dtype) in enumerate(zip(results, data, dtypes, strict=True)):
        shape = tuple(result.shape)
        if len(buffer) != math.prod(shape) * dtype.itemsize:
            raise _incomplete(f"{len(buffer)} bytes for leaf {leaf} of shape {shape}")
        array = np.frombuffer(buffer, dtype).reshape(shape).copy()  # writable
        arrays.append(array[()] if result.scalar else array)
    return arrays


class RemoteLeaves:
    """:class:`~trajstore.reading.LeafSource` for one group of a run on the store."""

    def __init__(self, reader: RemoteStorageReader, position: int, generation: int = 0) -> None:
        #: The open run.
        self.reader = reader
        self._position = position
        self.spec: GroupSpec = reader.spec.groups[position]
        #: Reads expect this generation of the run (0: any): see :meth:`pinned`.
        self.generation = generation

    def pinned(self) -> tuple[RemoteLeaves, int]:
        """This group pinned to the run's version now, and its frames then.

        Reads through the result raise
        :class:`~trajstore.errors.RunChangedError` once the run is replaced
        or this group rewound.
        """
        info = self.reader.version()
        return RemoteLeaves(self.reader, self._position, info.generation), info.frames[
            self.spec.name
        ]

    def frames(self) -> int:
        """Frames of the group on the store now."""
        return self.reader.describe().frames[self.spec.name]

    def read(self, leaves: Sequence[int], index: Any) -> list[Any]:
        """``array[index]`` of each chosen leaf, from the store."""
        calls = self.reader.calls
        components, is_tuple = wire.index_to_proto(index)
        request = qpb.ReadRequest(
            run=self.reader.run,
            group=self.spec.name,
            leaves=list(leaves),
            index=components,
            index_is_tuple=is_tuple,
            generation=self.generation,
        )
        dtypes = [self.spec.leaves[i].np_dtype for i in leaves]
        if self._fits_one_message(leaves, index):
            try:
                fetched = calls.fetch(request)
            except ResourceExhaustedError:
                pass  # more than this store's messages hold: stream it
            else:
                return _unpack(fetched, dtypes)
        responses = calls.stream(calls.read, request)
        first = next(responses)
        return _assemble(first.fields.results, dtypes, responses)

    def _fits_one_message(self, leaves: Sequence[int], index: Any) -> bool:
        """Whether the result is at most one frame of small leaves: one Fetch round trip."""
        first = index[0] if isinstance(index, tuple) and index else index
        single = not self.spec.time_axis or (
            isinstance(first, int | np.integer) and not isinstance(first, bool)
        )
        nbytes = sum(self.spec.leaves[i].frame_nbytes for i in leaves)
        return single and nbytes <= FETCH_BYTES


class RemoteGroupReader(GroupReader[Any]):
    """A :class:`~trajstore.GroupReader` over a group of a run on the store.

    Same results and exceptions as the local reader, plus :meth:`follow`.
    ``read_chunked`` fetches one chunk ahead, on a thread of its own, so the
    network and the caller's work on a chunk overlap.
    """

    def __init__(self, source: RemoteLeaves, *, like: Any = None) -> None:
        super().__init__(source, like=like)
        self._remote = source

    def _chunks(self, size: int, select: Callable[[Any], Any] | None) -> Iterator[Any]:
        # The next chunk travels while the caller works on this one (one chunk ahead).
        return read_ahead(self._pinned_chunks(size, select))

    def _pinned_chunks(self, size: int, select: Callable[[Any], Any] | None) -> Iterator[Any]:
        """The frames as the run is now, in chunks; :class:`RunChangedError` if it changes."""
        source, total = self._remote.pinned()
        pinned = GroupReader[Any](source, like=self._like)
        for start in range(0, total, size):
            yield pinned.read(slice(start, min(start + size, total)), select=select)

    def follow(
        self,
        start: int = 0,
        *,
        timeout: float | None = None,
        select: Callable[[Any], Any] | None = None,
        on_rewind: str | Callable[[RunChangedError], None] = "raise",
    ) -> Iterator[Any]:
        """Yield frames from ``start`` on, in order, as they become durable.

        Ends when the writer closes the run (after its last frame). Frames of
        a closed run are yielded at once. Follows one version of the run:
        when it is overwritten, or its writer rewrites frames of this group
        (a restart from a checkpoint: ``mode="append"`` logging from an
        earlier step), frames of the two versions are never joined.

        Args:
            start: First frame index.
            timeout: Give up (raise :class:`~trajstore.errors.UnavailableError`)
                if the whole follow takes longer than this many seconds.
            select: A view picking the fields to transfer (as in :meth:`read`).
            on_rewind: When the run changes under the follower: ``"raise"``
                :class:`~trajstore.errors.RunChangedError` (the default);
                ``"resume"``: go on with the new version from the first
                frame that differs (``error.rewind_frame``, or ``start``
                when the store does not know it), so the frames yielded from
                then on are the new version's; a callable: called with the
                error first (to drop the frames yielded from
                ``error.rewind_frame`` on), then resume. A rewind past the
                frames yielded so far is no change for the follower: it goes
                on. Resuming raises the error anyway if the group's schema
                changed (an overwrite with another config).

        Raises:
            RunChangedError: The run changed and ``on_rewind`` is ``"raise"``.
        """
        if not callable(on_rewind) and on_rewind not in ("raise", "resume"):
            raise InvalidArgumentError(
                f"on_rewind must be 'raise', 'resume' or a callable, not {on_rewind!r}"
            )
        return self._follow(start, timeout, select, on_rewind)

    def _follow(
        self,
        start: int,
        timeout: float | None,
        select: Callable[[Any], Any] | None,
        on_rewind: str | Callable[[RunChangedError], None],
    ) -> Iterator[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        # The version followed: the one the run has now, with the schema this reader read.
        generation = self._remote.reader.version().generation
        position = start  # the next frame to yield
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            frames = self._follow_version(position, generation, left, select)
            try:
                for frame in frames:
                    yield frame
                    position += 1
                return
            except RunChangedError as e:
                if on_rewind == "raise":
                    raise
                if e.rewind_frame is None:
                    self._remote.reader.version()  # raises if the group's schema changed
                first = start if e.rewind_frame is None else max(start, e.rewind_frame)
                if callable(on_rewind):
                    on_rewind(e)
                position, generation = min(position, first), e.new_generation
            finally:
                frames.close()

    def _follow_version(
        self,
        start: int,
        generation: int,
        timeout: float | None,
        select: Callable[[Any], Any] | None,
    ) -> Generator[Any, None, None]:
        """One Follow call: frames of one generation from ``start`` on."""
        positions, treedef = self._selected(select)
        unique = list(dict.fromkeys(positions))  # the store sends each leaf once
        reader = self._remote.reader
        calls = reader.calls
        request = qpb.FollowRequest(
            run=reader.run, group=self.name, leaves=unique, start=start, generation=generation
        )
        leaves = [self.spec.leaves[i] for i in unique]
        pending: dict[int, np.ndarray] = {}
        filled: dict[int, int] = {}  # bytes of each leaf of the batch received so far
        batch = (-1, 0)
        next_frame = start
        for incoming in calls.stream(calls.follow, request, timeout=timeout):
            part, data = incoming.fields, incoming.data
            if (part.start, part.count) != batch:
                if part.start != next_frame or filled:  # batches come whole, in order
                    raise _incomplete(f"frames from {part.start} where {next_frame} was next")
                batch = (part.start, part.count)
                pending = {}
            array = pending.get(part.leaf)
            if array is None:
                leaf = leaves[part.leaf]
                array = pending[part.leaf] = np.empty((part.count, *leaf.shape), leaf.np_dtype)
            flat = array.reshape(-1).view(np.uint8)
            size = len(data)
            if part.offset != filled.get(part.leaf, 0) or part.offset + size > flat.size:
                raise _incomplete(f"a part of leaf {part.leaf} at byte {part.offset} out of place")
            flat[part.offset : part.offset + size] = np.frombuffer(data, np.uint8)
            filled[part.leaf] = part.offset + size
            if part.leaf == len(leaves) - 1 and filled[part.leaf] == flat.size:
                if any(
                    i not in pending or filled[i] != pending[i].nbytes for i in range(len(leaves))
                ):
                    raise _incomplete(f"frames from {part.start}: a leaf not filled")
                filled = {}
                next_frame = part.start + part.count
                columns = [pending[i] for i in range(len(leaves))]
                for k in range(part.count):
                    frame = [column[k] for column in columns]
                    if len(unique) != len(positions):
                        frame = repeat_leaves(positions, unique, frame)
                    if treedef is not None:
                        yield treedef.unflatten(frame)
                    else:
                        yield self._rebuild(frame)


class RemoteStorageReader:
    """Reads one run on the store, with the shape of :class:`~trajstore.HDF5StorageReader`.

    Use as a context manager; also works on runs still being written.

    Args:
        address: ``host:port`` of the store; several stores sharing one data
            directory: ``host1:port,host2:port`` or a ``dns:///`` name (calls
            about a run go to one of them, chosen by the run name).
        run: Run name.
        token: Bearer token (default: ``TRAJSTORE_TOKEN``).
        timeout: Seconds to wait for each unary call.
        tls_ca: CA certificate (PEM) to connect with TLS (default: ``TRAJSTORE_TLS_CA``).
    """

    def __init__(
        self,
        address: str,
        run: str,
        *,
        token: str | None = None,
        timeout: float | None = 60.0,
        tls_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        self.address = address
        self.run = run
        self._token = token
        self._timeout = timeout
        #: CA certificate (PEM) for TLS, if given.
        self.tls_ca = tls_ca
        self._calls: _Calls | None = None
        self._spec: RunSpec | None = None
        self._reopen = False  # a copy from a pickle of an open reader: connect at first use
        self._reopening = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """What another process needs to read the run: never the connection, nor the token.

        A copy of an open reader (in a dask worker, say) connects at its
        first call, with its own process's ``TRAJSTORE_TOKEN``: a token never
        travels inside a pickle.
        """
        return {
            "address": self.address,
            "run": self.run,
            "timeout": self._timeout,
            "tls_ca": self.tls_ca,
            "spec": self._spec,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["address"], state["run"], timeout=state["timeout"], tls_ca=state["tls_ca"]
        )
        self._spec = state["spec"]
        self._reopen = self._spec is not None

    def __enter__(self) -> RemoteStorageReader:
        if self._calls is not None:  # already open (``Client.open_run`` opens it)
            return self
        self._calls = _Calls(self.address, self._token, self._timeout, self.tls_ca)
        try:
            described = self._calls.unary(
                self._calls.stub.DescribeRun, qpb.DescribeRunRequest(run=self.run)
            )
        except BaseException:
            self._calls.close()
            self._calls = None
            raise
        self._spec = wire.schema_from_proto(described.schema)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._reopen = False
        if self._calls is not None:
            self._calls.close()
            self._calls = None

    @property
    def calls(self) -> _Calls:
        """The open connection (for the group readers)."""
        if self._calls is None and self._reopen:
            with self._reopening:
                if self._calls is None:
                    self._calls = _Calls(self.address, self._token, self._timeout, self.tls_ca)
        if self._calls is None:
            raise NotOpenError("the reader is not open; use it as a context manager")
        return self._calls

    @property
    def spec(self) -> RunSpec:
        """The run's schema."""
        if self._spec is None:
            raise NotOpenError("the reader is not open; use it as a context manager")
        return self._spec

    def describe(self) -> RunInfo:
        """The run's state now: frames per group, open or closed, size, ..."""
        calls = self.calls
        described = calls.unary(calls.stub.DescribeRun, qpb.DescribeRunRequest(run=self.run))
        return RunInfo.from_proto(described.info)

    def version(self) -> RunInfo:
        """:meth:`describe`, checking that the run still has the schema it was opened with.

        Raises:
            RunChangedError: The run was overwritten with another schema:
                this reader cannot read it (open it again).
        """
        calls = self.calls
        described = calls.unary(calls.stub.DescribeRun, qpb.DescribeRunRequest(run=self.run))
        info = RunInfo.from_proto(described.info)
        if wire.schema_from_proto(described.schema) != self.spec:
            raise RunChangedError(
                f"run {self.run!r} was replaced by one with another schema; open it again",
                new_generation=info.generation,
            )
        return info

    def list_groups(self) -> list[str]:
        """Group names, in config order."""
        return self.spec.group_names

    @property
    def metadata(self) -> dict[str, Any]:
        """User metadata given to the writer."""
        return self.spec.metadata

    @property
    def actual_steps(self) -> int:
        """Steps logged, as of the writer's last acknowledged flush."""
        return self.describe().actual_steps

    def focus_group(
        self, view_or_name: str | Callable[[Any], Any], *, like: Any = None
    ) -> RemoteGroupReader:
        """A reader for one group, by name or by a view on the config."""
        position = group_position(self.spec, view_or_name, self.run)
        return RemoteGroupReader(RemoteLeaves(self, position), like=like)


class Client:
    """A connection to a store, for analysts: list, open and pull runs.

    Args:
        address: ``host:port`` of the store; several stores sharing one data
            directory: ``host1:port,host2:port`` or a ``dns:///`` name (calls
            about a run go to one of them, chosen by the run name).
        token: Bearer token (default: ``TRAJSTORE_TOKEN``).
        timeout: Seconds to wait for each unary call.
        tls_ca: CA certificate (PEM) to connect with TLS (default: ``TRAJSTORE_TLS_CA``).
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        timeout: float | None = 60.0,
        tls_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        self.address = address
        self._token = token
        self._timeout = timeout
        self._tls_ca = tls_ca
        self._calls = _Calls(address, token, timeout, tls_ca)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._calls.close()

    def list_runs(self, prefix: str = "") -> list[RunInfo]:
        """Every run on the store (whose name starts with ``prefix``), in name order.

        The store answers in pages (bounded in runs and bytes); this asks for
        each in turn.
        """
        runs: list[RunInfo] = []
        token = ""
        while True:
            request = qpb.ListRunsRequest(prefix=prefix, page_token=token)
            response = self._calls.unary(self._calls.stub.ListRuns, request)
            runs.extend(RunInfo.from_proto(info) for info in response.runs)
            if not response.next_page_token or response.next_page_token <= token:
                return runs
            token = response.next_page_token

    def open_run(self, run: str) -> RemoteStorageReader:
        """An open reader for ``run`` (close it, or use it in a ``with`` block)."""
        return RemoteStorageReader(
            self.address, run, token=self._token, timeout=self._timeout, tls_ca=self._tls_ca
        ).__enter__()

    def open_runs(self, prefix: str, group: str | None = None, *, chunks: Any = None) -> Any:
        """One group of every run whose name starts with ``prefix``, as one xarray Dataset.

        A ``run`` dimension stacks the runs, which must have equal shapes;
        see :func:`trajstore.open_runs`. Needs the ``analysis`` extra.
        """
        from trajstore.xarray_backend import open_runs

        return open_runs(
            self.address, prefix, group, chunks=chunks, token=self._token, tls_ca=self._tls_ca
        )

    def pull(
        self,
        run: str,
        path: str | os.PathLike[str],
        *,
        progress: bool | None = None,
        chunk_bytes: int = 16 << 20,
        overwrite: bool = False,
    ) -> Path:
        """Download ``run`` into a local HDF5 file that :class:`~trajstore.HDF5StorageReader` opens.

        Args:
            run: Run name.
            path: Local file to write; its directory must exist.
            progress: Show a progress bar (default: when stderr is a terminal).
            chunk_bytes: Bytes fetched per request.
            overwrite: Replace ``path`` if it exists (else
                :class:`~trajstore.errors.RunExistsError`).
        """
        from trajstore.client.pull import pull_run

        show = sys.stderr.isatty() if progress is None else progress
        with self.open_run(run) as reader:
            return pull_run(
                reader, Path(path), progress=show, chunk_bytes=chunk_bytes, overwrite=overwrite
            )


def connect(
    address: str,
    *,
    token: str | None = None,
    timeout: float | None = 60.0,
    tls_ca: str | os.PathLike[str] | None = None,
) -> Client:
    """Connect to the store at ``address`` (``host:port``, a comma list, or ``dns:///name:port``).

    Args:
        address: The store.
        token: Bearer token (default: ``TRAJSTORE_TOKEN``).
        timeout: Seconds to wait for each unary call.
        tls_ca: CA certificate (PEM) to connect with TLS (default: ``TRAJSTORE_TLS_CA``).
    """
    return Client(address, token=token, timeout=timeout, tls_ca=tls_ca)

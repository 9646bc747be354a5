"""Block writes of flat leaves into a run file."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from trajstore.bounds import MAX_JSON_DEPTH, check_count, loads_json
from trajstore.durable import sync_directory
from trajstore.errors import (
    FrameMismatchError,
    RunExistsError,
    RunNotFoundError,
    SchemaError,
    StepOrderError,
    StorageError,
    TrajstoreError,
)
from trajstore.schema import GroupSpec, RunSpec, storage_dtype
from trajstore.store import layout
from trajstore.store.naming import FRAME_DIM, STEP_VARIABLE, GroupNames, run_names
from trajstore.store.opening import is_left_open
from trajstore.store.ownership import RunLock
from trajstore.store.space import check_room
from trajstore.store.stored import encode_compressed, encode_stored

__all__ = [
    "FlushTicket",
    "Hdf5ObjWriter",
    "OpenMode",
    "PreparedBlock",
    "RunFileWriter",
    "RunLeftOpenError",
]

#: ``create``: the file must not exist; ``overwrite``: replace it;
#: ``append``: resume it (the schema must match).
OpenMode = Literal["create", "overwrite", "append"]

#: A block's whole chunks being compressed on a chunk pool, per leaf (``None``:
#: none of that leaf's), by the time index of each chunk's first frame.
PreparedBlock = list[dict[int, Future[bytes | None]] | None]


class Hdf5ObjWriter:
    """Writes blocks of frames of one logging group into its datasets.

    A block is ``count`` consecutive frames starting at time index ``start``,
    given as one stacked array per leaf (shape ``(count, *leaf.shape)``).
    Writing a block at ``start`` makes the group ``start + count`` frames long:
    frames past it (left by an earlier, longer session) are discarded, which
    is what resuming a run from an earlier checkpoint means.

    Given a ``chunk_pool``, whole chunks of compressed leaves are compressed
    on its threads (:func:`~trajstore.store.stored.encode_compressed`) and
    written with ``write_direct_chunk``, instead of through HDF5's filters
    on this thread. Chunks of leaves without filters are written with
    ``write_direct_chunk`` straight from the block (their stored bytes are the
    frames' bytes): no copy through HDF5's chunk cache. That holds for chunks
    of whole frames and for chunks of a few rows of one large frame.

    :meth:`prepare_block` starts a block's compression before its turn to be
    written, so that the pool works ahead of the writing thread instead of
    each write waiting for its own chunks.
    """

    def __init__(
        self,
        spec: GroupSpec,
        names: GroupNames,
        group: h5py.Group,
        frames: int,
        chunk_pool: Executor | None = None,
    ) -> None:
        self.spec = spec
        self.names = names
        self.datasets = [group[name] for name in names.datasets]
        self.frames = frames
        interval = layout.step_interval(spec) if names.netcdf else None
        # The ``step`` coordinate (format 2, groups logging every n steps).
        self._steps: tuple[h5py.Dataset, int] | None = (
            None if interval is None else (group[STEP_VARIABLE], interval)
        )
        self._pool = chunk_pool
        self._storage = [storage_dtype(leaf.dtype) for leaf in spec.leaves]
        self._tails = [
            _stored_tail_plan(ds, leaf.frame_nbytes)
            for ds, leaf in zip(self.datasets, spec.leaves, strict=True)
        ]
        self._raw_chunk_frames = [_raw_chunk_frames(ds) for ds in self.datasets]
        self._raw_slab_rows = [_raw_slab_rows(ds) for ds in self.datasets]

    @classmethod
    def create(
        cls,
        parent: h5py.Group,
        spec: GroupSpec,
        names: GroupNames,
        chunk_pool: Executor | None = None,
    ) -> Hdf5ObjWriter:
        """Create the HDF5 group and its (empty) datasets for ``spec``, named by ``names``."""
        group = parent.create_group(names.path)
        datasets = []
        for leaf, name in zip(spec.leaves, names.datasets, strict=True):
            ds = group.create_dataset(name, **layout.dataset_kwargs(leaf, spec))
            if leaf.dtype == "bfloat16":
                ds.attrs[layout.ATTR_DTYPE] = leaf.dtype
            if leaf.units:
                ds.attrs[layout.ATTR_UNITS] = np.bytes_(leaf.units)  # netCDF text, not a vlen str
            datasets.append(ds)
        if names.netcdf:
            _lay_out_dimensions(group, spec, names, datasets)
        group.attrs[layout.ATTR_GROUP_SPEC] = json.dumps(spec.to_json())
        group.attrs[layout.ATTR_PATHS] = json.dumps(list(names.datasets))
        group.attrs[layout.ATTR_FRAMES] = np.int64(0)
        return cls(spec, names, group, 0, chunk_pool)

    @classmethod
    def open(
        cls,
        parent: h5py.Group,
        spec: GroupSpec,
        names: GroupNames,
        chunk_pool: Executor | None = None,
    ) -> Hdf5ObjWriter:
        """Bind to the existing group for ``spec`` (to resume a run)."""
        group = parent[names.path]
        return cls(spec, names, group, int(group.attrs[layout.ATTR_FRAMES]), chunk_pool)

    def check_block(self, start: int, count: int, leaves: Sequence[np.ndarray]) -> None:
        """Raise :class:`FrameMismatchError` unless the block fits the schema."""
        spec = self.spec
        if len(leaves) != len(spec.leaves):
            raise FrameMismatchError(
                f"{spec.name}: got {len(leaves)} leaves, the schema has {len(spec.leaves)}"
            )
        if start < 0 or count < 0:
            raise FrameMismatchError(f"{spec.name}: negative start or count")
        if not spec.time_axis and (start != 0 or count != 1):
            raise FrameMismatchError(f"{spec.name} has no time axis: it holds one frame")
        for leaf, array in zip(spec.leaves, leaves, strict=True):
            if array.shape != (count, *leaf.shape) or array.dtype != leaf.np_dtype:
                raise FrameMismatchError(
                    f"{spec.name} leaf {leaf.path}: expected {count} frame(s) of "
                    f"{leaf.dtype}{list(leaf.shape)}, got {array.dtype}{list(array.shape)}"
                )

    def prepare_block(
        self, start: int, count: int, leaves: Sequence[np.ndarray]
    ) -> PreparedBlock | None:
        """Start compressing the whole chunks that ``write_block(start, count, leaves)`` writes.

        Pass the result to :meth:`write_block`. Touches no HDF5 object, so it
        may run on another thread than the writes (the thread that queues the
        block, while the writing thread is busy with earlier ones). Returns
        ``None`` where there is nothing to compress on a pool, or the block
        does not fit the schema (:meth:`write_block` raises for it then).
        """
        pool = self._pool
        if pool is None or not self.spec.time_axis or not any(self._tails):
            return None
        try:
            self.check_block(start, count, leaves)
        except FrameMismatchError:
            return None
        prepared: PreparedBlock = []
        try:
            for i, plan in enumerate(self._tails):
                if plan is None:
                    prepared.append(None)
                    continue
                array = self._stored_view(i, leaves[i])
                size, filters = plan.frames, plan.filters
                # A chunk begun before ``start`` is on disk stored: it stays stored.
                first = -start % size
                prepared.append(
                    {
                        start + j: pool.submit(encode_compressed, array[j : j + size], filters)
                        for j in range(first, count - (count - first) % size, size)
                        if j + size <= count
                    }
                )
        except RuntimeError:  # the pool was shut down: write_block reports it
            return None
        return prepared

    def _stored_view(self, leaf: int, array: np.ndarray) -> np.ndarray:
        """``array`` as its dataset's storage dtype (bfloat16 as its bits)."""
        storage = self._storage[leaf]
        return array if array.dtype == storage else array.view(storage)

    def write_block(
        self,
        start: int,
        count: int,
        leaves: Sequence[np.ndarray],
        prepared: PreparedBlock | None = None,
    ) -> None:
        """Write ``count`` frames from ``start`` (see the class docstring).

        ``prepared``: what :meth:`prepare_block` returned for this block.
        """
        self.check_block(start, count, leaves)
        stop = start + count
        for i, ds in enumerate(self.datasets):
            array = self._stored_view(i, leaves[i])
            ready = prepared[i] if prepared is not None else None
            if not self.spec.time_axis:
                ds[()] = array[0]
                continue
            if ds.shape[0] != stop:
                ds.resize(stop, axis=0)
            tail = self._tails[i]
            if tail is None or (start % tail.frames == 0 and stop % tail.frames == 0):
                if count:
                    self._write_frames(i, start, array, ready)
                continue
            # A chunk of many frames that the block leaves partly filled is
            # rewritten at every flush until it fills up. Stored without
            # compression its size stays the same, so HDF5 rewrites it in place
            # (see store/stored.py). It stays stored once full: in SWMR mode HDF5
            # never frees a chunk's old space when its size changes, so
            # compressing it then would leak the whole stored chunk.
            size = tail.frames
            head = start - start % size  # the first chunk the block touches
            whole_from = head if start == head else head + size
            whole_to = max(stop - stop % size, whole_from)
            if start != head:
                # The block continues a chunk already on disk, stored.
                self._write_stored(i, tail, head, start, array[: min(stop, head + size) - start])
            if whole_from < whole_to:
                self._write_frames(
                    i, whole_from, array[whole_from - start : whole_to - start], ready
                )
            if stop % size and stop - stop % size >= whole_from:
                # The block ends inside a chunk it began (or that starts with it).
                tail_start = stop - stop % size
                self._write_stored(i, tail, tail_start, tail_start, array[tail_start - start :])
        if self._steps is not None:
            steps, interval = self._steps
            if steps.shape[0] != stop:
                steps.resize(stop, axis=0)
            if count:
                steps[start:stop] = np.arange(start, stop, dtype=np.int64) * interval
        self.frames = stop

    def _write_stored(
        self, leaf: int, plan: _StoredTail, chunk_start: int, start: int, array: np.ndarray
    ) -> None:
        """Write frames ``start...`` of ``leaf`` into its chunk at ``chunk_start``, stored.

        Frames of the chunk before ``start`` are read back from the file.
        """
        ds = self.datasets[leaf]
        chunk = np.zeros(plan.shape, self._storage[leaf])
        if start > chunk_start:
            chunk[: start - chunk_start] = ds[chunk_start:start]
        chunk[start - chunk_start : start - chunk_start + len(array)] = array
        encoded = encode_stored(chunk, plan.filters)
        ds.id.write_direct_chunk((chunk_start,) + (0,) * (ds.ndim - 1), encoded)

    def _write_frames(
        self,
        leaf: int,
        start: int,
        array: np.ndarray,
        ready: dict[int, Future[bytes | None]] | None = None,
    ) -> None:
        """``ds[start:start + len(array)] = array`` for ``leaf``'s dataset, whole chunks directly.

        Chunks of an unfiltered leaf (whole frames each, or slabs of rows of
        one frame) go as they are; chunks of a filtered one are compressed on
        the pool (``ready``: those whose compression already started, by
        first frame) and written in order as each is done.
        """
        ds, plan = self.datasets[leaf], self._tails[leaf]
        count = len(array)
        raw = array.dtype.str == ds.dtype.str  # the block holds the file's bytes
        size = self._raw_chunk_frames[leaf] if raw else 0
        if size and not start % size and not count % size:
            array = np.ascontiguousarray(array)  # the chunks' bytes
            origin = (0,) * (ds.ndim - 1)
            for j in range(0, count, size):
                ds.id.write_direct_chunk((start + j, *origin), array[j : j + size])
            return
        rows = self._raw_slab_rows[leaf] if raw else 0
        if rows:
            _write_slabs(ds, start, array, rows)
            return
        pool = self._pool
        if pool is None or plan is None or start % plan.frames or count % plan.frames:
            ds[start : start + count] = array
            return
        size, filters = plan.frames, plan.filters
        ready = ready or {}
        encoding = [
            ready.get(start + j) or pool.submit(encode_compressed, array[j : j + size], filters)
            for j in range(0, count, size)
        ]
        origin = (0,) * (ds.ndim - 1)
        for j, future in zip(range(0, count, size), encoding, strict=True):
            data = future.result()
            if data is None:  # a filter not emulated here: HDF5 runs it
                ds[start + j : start + j + size] = array[j : j + size]
            else:
                ds.id.write_direct_chunk((start + j, *origin), data)


class RunLeftOpenError(StorageError):
    """The run file is marked open for writing by a writer that was killed.

    Raised only under the run's lock, so that writer is gone: see
    :func:`trajstore.store.open_run.open_run_writer`, which recovers the file.
    """


@dataclass(frozen=True)
class FlushTicket:
    """What a flush makes durable: frames per group when it began, and what to publish."""

    frames: tuple[int, ...]
    dirty: frozenset[int]  # groups whose counts changed
    actual_steps: int


class RunFileWriter:
    """One run file open for writing, in SWMR mode so readers can follow it.

    Not thread-safe: one thread (normally a :class:`BackgroundWriter`) drives
    it; only :meth:`sync` may be called from another. ``chunk_pool``: threads
    to compress whole chunks on (see :class:`Hdf5ObjWriter`); the store
    passes one, the local writer leaves the simulation's cores alone.

    The writer holds the run's lock (:mod:`~trajstore.store.ownership`) from
    before it touches the file until it has closed it: a second writer of
    the run, in any process, gets :class:`RunLockedError`. ``lock``: a lock
    the caller holds that covers ``path`` (a rebuild or a pull writes a
    stand-in for a run under the run's lock); the writer releases it when it
    closes, so pass a :meth:`~trajstore.store.ownership.RunLock.share` to keep
    it. By default the writer takes ``path``'s own lock.

    Appending to a file a killed writer left open raises
    :class:`RunLeftOpenError`; :func:`trajstore.store.open_run.open_run_writer`
    recovers such a file and is what writers use.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        spec: RunSpec,
        *,
        mode: OpenMode = "create",
        chunk_pool: Executor | None = None,
        lock: RunLock | None = None,
    ):
        self.path = Path(path)
        self.spec = spec
        self._chunk_pool = chunk_pool
        self._dirty: set[int] = set()
        self._lock: RunLock | None = lock if lock is not None else RunLock.acquire(self.path)
        try:
            self._file, self.groups = self._open(mode)
        except BaseException as error:
            self._release_lock()
            if isinstance(error, TrajstoreError):
                raise
            if isinstance(error, FileExistsError):
                raise RunExistsError(f"{self.path} already exists") from None
            if isinstance(error, OSError):
                raise StorageError(f"cannot open {self.path} for writing: {error}") from error
            raise
        self._actual_steps = int(self._file.attrs[layout.ATTR_ACTUAL_STEPS])
        #: The run's version (see :func:`~trajstore.store.layout.new_generation`).
        self.generation = int(self._file.attrs.get(layout.ATTR_GENERATION, 0))
        self._announced: int | None = None  # see announce_generation
        # The counts in the file, and the lowest frame each group rewrote since
        # the last begin_flush (that flush's data sync does not cover it).
        self._published = [g.frames for g in self.groups]
        self._rewritten: dict[int, int] = {}
        #: Whether a write, flush or ``fsync`` of the file failed: what was
        #: written since the last flush may not be on disk (see :meth:`abort`).
        self.io_failed = False
        handle = self._file.id.get_vfd_handle()
        self._fd: int | None = handle if isinstance(handle, int) else None

    def _open(self, mode: OpenMode) -> tuple[h5py.File, list[Hdf5ObjWriter]]:
        if mode == "append":
            if not self.path.exists():
                raise RunNotFoundError(f"no run file at {self.path} to append to")
            file = self._open_existing()
            try:
                groups = self._bind_existing(file)
            except BaseException:
                file.close()
                raise
        else:
            file, groups = self._create(mode)
        file.swmr_mode = True
        return file, groups

    def _create(self, mode: OpenMode) -> tuple[h5py.File, list[Hdf5ObjWriter]]:
        """A new file laid out for the spec, put in place only once it is complete.

        It is built under a staging name next to ``path``: if laying it out
        fails, an existing run (``overwrite``) is untouched and no half-made
        file is left behind.
        """
        if mode == "create" and self.path.exists():
            raise RunExistsError(f"{self.path} already exists")
        target = Path(os.path.realpath(self.path))  # a symlinked path: its target is replaced
        staging = target.with_name(target.name + ".creating")
        file = h5py.File(staging, "w", libver=layout.LIBVER, locking=False)
        try:
            for key, value in layout.run_attrs(self.spec).items():
                file.attrs[key] = value
            groups = [
                Hdf5ObjWriter.create(file, g, names, self._chunk_pool)
                for g, names in zip(
                    self.spec.groups, run_names(self.spec, layout.FORMAT_VERSION), strict=True
                )
            ]
            if mode == "create":
                _link_new(staging, target)
            else:
                os.replace(staging, target)
            sync_directory(target.parent)  # the new name survives a crash of the machine
        except BaseException:
            file.close()
            staging.unlink(missing_ok=True)
            raise
        return file, groups

    def _open_existing(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r+", libver=layout.LIBVER, locking=False)
        except OSError as e:
            if is_left_open(e):  # we hold the lock: its writer is gone
                raise RunLeftOpenError(f"{self.path} was left open by a writer that died") from e
            raise

    def _bind_existing(self, file: h5py.File) -> list[Hdf5ObjWriter]:
        version = int(file.attrs.get(layout.ATTR_FORMAT, -1))
        if version not in layout.READABLE_FORMATS:
            raise SchemaError(
                f"{self.path} has format {version}; this trajstore appends to formats "
                f"{', '.join(map(str, layout.READABLE_FORMATS))}"
            )
        existing = loads_json(file.attrs[layout.ATTR_GROUP_NAMES], "group names")
        if existing != self.spec.group_names:
            raise SchemaError(
                f"cannot append: the run has groups {existing}, the writer {self.spec.group_names}"
            )
        groups = []
        for spec, names in zip(self.spec.groups, run_names(self.spec, version), strict=True):
            stored = loads_json(
                file[names.path].attrs[layout.ATTR_GROUP_SPEC],
                f"group {spec.name} spec",
                max_depth=MAX_JSON_DEPTH + 1,  # the structure description is one level down
            )
            if _layout_key(stored) != _layout_key(spec.to_json()):
                raise SchemaError(f"cannot append: group {spec.name} has a different schema")
            groups.append(Hdf5ObjWriter.open(file, spec, names, self._chunk_pool))
        return groups

    @property
    def actual_steps(self) -> int:
        """Steps run, as last recorded."""
        return self._actual_steps

    @property
    def frames(self) -> list[int]:
        """Frames written per group (durable after the next :meth:`flush`)."""
        return [g.frames for g in self.groups]

    def prepare_block(
        self, group_index: int, start: int, count: int, leaves: Sequence[np.ndarray]
    ) -> PreparedBlock | None:
        """Start compressing a block's chunks ahead of its write.

        See :meth:`Hdf5ObjWriter.prepare_block`; unlike the rest of this
        class, safe to call from any thread.
        """
        if not 0 <= group_index < len(self.groups):
            return None
        return self.groups[group_index].prepare_block(start, count, leaves)

    def write_block(
        self,
        group_index: int,
        start: int,
        count: int,
        leaves: Sequence[np.ndarray],
        prepared: PreparedBlock | None = None,
    ) -> None:
        """Write a block of frames to group ``group_index``.

        ``prepared``: what :meth:`prepare_block` returned for this block.

        A block that rewrites frames already counted in the file (a resend
        after a reconnect, a restart from a checkpoint) first lowers the
        count to ``start`` and makes that durable: the file never counts a
        frame while it is being replaced, or after its group shrank. With
        the lowered count it records the run's new generation (one more,
        or the one announced: :meth:`announce_generation`).
        """
        group = self.groups[group_index]
        check_room(self.path, sum(leaf.nbytes for leaf in leaves))
        if start < group.frames:
            self._rewritten[group_index] = min(self._rewritten.get(group_index, start), start)
        try:
            if start < self._published[group_index]:
                self._rewind_generation()
                self._write_count(group_index, start)
                self._file.flush()
                self.sync()
            group.write_block(start, count, leaves, prepared)
        except OSError as e:
            raise self._io_failure(f"writing {group.spec.name} of {self.path}", e) from e
        self._dirty.add(group_index)

    def announce_generation(self, generation: int) -> None:
        """Rewrites record ``generation`` (at least) instead of one more each.

        For a caller that shows the run to readers itself (the store's writer
        session): it picks the generation when it hides the frames a block
        will rewrite, before the block reaches this writer, and announces it
        here. From the first call on, a rewrite records the highest
        generation announced and never counts up by itself, so a resend
        (announced nothing new) keeps the generation. Safe from any thread.
        """
        self._announced = generation

    def _rewind_generation(self) -> None:
        """Record the generation of a rewrite (reaches the OS with the next HDF5 flush)."""
        announced = self._announced
        new = self.generation + 1 if announced is None else max(self.generation, announced)
        if new != self.generation:
            self._file.attrs[layout.ATTR_GENERATION] = np.int64(new)
            self.generation = new

    def set_actual_steps(self, actual_steps: int) -> None:
        """Record the number of steps the simulation ran (written at the next flush).

        Raises:
            StepOrderError: Unless ``actual_steps`` is an integer in [0, 2**63 - 1].
        """
        self._actual_steps = check_count(actual_steps, "actual_steps", StepOrderError)

    def flush(self) -> None:
        """Make everything written so far durable, then publish the frame counts.

        Data goes to disk (flushed by HDF5 and fsync'ed) before the counts that
        make it visible, so a reader that trusts ``frames`` never sees a frame
        that is not there, and frames counted survive a crash of the process
        or of the machine. The same steps, split so that the ``fsync`` calls
        can run on another thread while this one goes on writing:
        :meth:`begin_flush`, :meth:`sync`, :meth:`publish`, :meth:`sync`.
        """
        ticket = self.begin_flush()
        self.sync()
        self.publish(ticket)
        self.sync()

    def begin_flush(self) -> FlushTicket:
        """Hand everything written so far to the OS; note what the next publish counts."""
        try:
            self._file.flush()
        except OSError as e:
            raise self._io_failure(f"flushing {self.path}", e) from e
        ticket = FlushTicket(tuple(self.frames), frozenset(self._dirty), self._actual_steps)
        self._dirty.clear()
        self._rewritten.clear()
        return ticket

    def sync(self) -> None:
        """``fsync`` the file: what HDF5 handed to the OS is on disk. Safe from any thread."""
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as e:
            raise self._io_failure(f"flushing {self.path}", e) from e

    def publish(self, ticket: FlushTicket) -> None:
        """Write the counts of ``ticket`` (its data synced) and hand them to the OS.

        A group that rewrote frames since the ticket was taken publishes none
        from the first one rewritten: their new data is not synced yet.
        """
        try:
            for i in sorted(ticket.dirty):
                frames = min(ticket.frames[i], self.groups[i].frames)
                frames = min(frames, self._rewritten.get(i, frames))
                self._write_count(i, frames)
            self._file.attrs[layout.ATTR_ACTUAL_STEPS] = np.int64(ticket.actual_steps)
            self._file.flush()
        except OSError as e:
            raise self._io_failure(f"flushing {self.path}", e) from e

    def _io_failure(self, what: str, error: OSError) -> StorageError:
        """Note that a write, flush or ``fsync`` failed (see :attr:`io_failed`); the error."""
        self.io_failed = True
        return StorageError(f"{what} failed: {error}")

    def _write_count(self, group_index: int, frames: int) -> None:
        """Set a group's count in the file (reaches the OS with the next HDF5 flush)."""
        if frames != self._published[group_index]:
            path = self.groups[group_index].names.path
            self._file[path].attrs[layout.ATTR_FRAMES] = np.int64(frames)
            self._published[group_index] = frames

    def close(self) -> None:
        """Flush and close the file, then release the run's lock."""
        try:
            if self._file.id.valid:
                try:
                    self.flush()
                finally:
                    self._file.close()
        finally:
            self._release_lock()

    def abort(self) -> None:
        """Close the file without publishing counts: after :attr:`io_failed`.

        The file keeps the counts of the last flush that completed; frames
        written since are not counted, since they may not be on disk.
        """
        try:
            if self._file.id.valid:
                self._file.close()
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()


@dataclass(frozen=True)
class _StoredTail:
    """How to write a partly filled chunk of a filtered leaf uncompressed."""

    shape: tuple[int, ...]  # the chunk's shape
    filters: list[tuple[int, tuple[int, ...]]]  # the pipeline: (filter id, client data)

    @property
    def frames(self) -> int:
        return self.shape[0]


def _raw_chunk_frames(ds: h5py.Dataset) -> int:
    """Frames per chunk of a dataset whose chunks hold whole frames unfiltered; else 0."""
    chunks = ds.chunks
    if chunks is None or len(chunks) != ds.ndim or tuple(chunks[1:]) != ds.shape[1:]:
        return 0
    if ds.id.get_create_plist().get_nfilters():
        return 0
    return int(chunks[0])


def _raw_slab_rows(ds: h5py.Dataset) -> int:
    """Rows per chunk of a dataset whose unfiltered chunks are slabs of one frame; else 0.

    A chunk ``(1, rows, *frame.shape[1:])`` with ``rows`` below the frame's
    first axis holds a contiguous byte range of one frame.
    """
    chunks = ds.chunks
    if chunks is None or ds.ndim < 2 or len(chunks) != ds.ndim or chunks[0] != 1:
        return 0
    if chunks[1] >= ds.shape[1] or tuple(chunks[2:]) != ds.shape[2:]:
        return 0
    if ds.id.get_create_plist().get_nfilters():
        return 0
    return int(chunks[1])


def _write_slabs(ds: h5py.Dataset, start: int, array: np.ndarray, rows: int) -> None:
    """``ds[start:start + len(array)] = array`` chunk by chunk, ``rows`` rows of a frame each.

    Each chunk goes to the file straight from a view of the block; the last
    chunk of a frame, past its end, is padded into a chunk-sized copy.
    """
    array = np.ascontiguousarray(array)  # the chunks' bytes
    length = array.shape[1]
    whole = length - length % rows
    inner = (0,) * (ds.ndim - 2)
    for index, frame in enumerate(array, start):
        for row in range(0, whole, rows):
            ds.id.write_direct_chunk((index, row, *inner), frame[row : row + rows])
        if whole < length:
            edge = np.zeros((rows, *frame.shape[1:]), array.dtype)
            edge[: length - whole] = frame[whole:]
            ds.id.write_direct_chunk((index, whole, *inner), edge)


def _stored_tail_plan(ds: h5py.Dataset, frame_nbytes: int) -> _StoredTail | None:
    """A plan for datasets whose chunks span many whole frames through known filters."""
    chunks = ds.chunks
    if chunks is None or chunks[0] <= 1 or frame_nbytes == 0 or tuple(chunks[1:]) != ds.shape[1:]:
        return None
    plist = ds.id.get_create_plist()
    filters = []
    for i in range(plist.get_nfilters()):
        filter_id, _flags, client_data, _name = plist.get_filter(i)
        filters.append((int(filter_id), tuple(int(v) for v in client_data)))
    if not filters or encode_stored(np.zeros(1, ds.dtype), filters) is None:
        return None
    return _StoredTail(tuple(chunks), filters)


#: The ``NAME`` of a netCDF-4 dimension that is not a variable, by its length.
_NOT_A_VARIABLE = "This is a netCDF dimension but not a netCDF variable.%10d"


def _lay_out_dimensions(
    group: h5py.Group, spec: GroupSpec, names: GroupNames, datasets: Sequence[h5py.Dataset]
) -> None:
    """Give a new group's datasets netCDF-4 dimensions and, where known, the ``step`` coordinate.

    The dimensions are dimension scales that hold no data (HDF5 allocates
    nothing for them); the time axis's stays empty, as netCDF-4 leaves it:
    readers take an unlimited dimension's length from its variables.
    """
    frame = None
    steps = None
    if spec.time_axis:
        frame = group.create_dataset(
            FRAME_DIM, shape=(0,), maxshape=(None,), dtype="f4", chunks=(1,)
        )
        frame.make_scale(_NOT_A_VARIABLE % 0)
        interval = layout.step_interval(spec)
        if interval is not None:
            chunk = (layout.step_chunk_frames(spec),)
            steps = group.create_dataset(
                STEP_VARIABLE, shape=(0,), maxshape=(None,), dtype="<i8", chunks=chunk
            )
            steps.dims[0].attach_scale(frame)
            steps.attrs["long_name"] = np.bytes_(f"simulation step (every {interval})")
    for index, (leaf, ds) in enumerate(zip(spec.leaves, datasets, strict=True)):
        axes = 0
        if frame is not None:
            ds.dims[0].attach_scale(frame)
            axes = 1
        for axis, path in enumerate(names.dim_paths(index)):
            size = leaf.shape[axis]
            scale = group.create_dataset(path, shape=(size,), dtype="f4")
            scale.make_scale(_NOT_A_VARIABLE % size)
            ds.dims[axis + axes].attach_scale(scale)
        if steps is not None and "/" not in names.datasets[index]:
            # netCDF looks a coordinate up in the variable's own group only.
            ds.attrs["coordinates"] = np.bytes_(STEP_VARIABLE)


def _layout_key(group_json: dict[str, Any]) -> tuple[Any, ...]:
    """The parts of a group spec that fix its on-disk layout (units do not)."""
    leaves = [{k: v for k, v in leaf.items() if k != "units"} for leaf in group_json["leaves"]]
    return (
        group_json["name"],
        group_json["time_axis"],
        json.dumps(leaves, sort_keys=True),
        json.dumps(group_json["compression"], sort_keys=True),
    )


def _link_new(staging: Path, path: Path) -> None:
    """Give ``staging`` the name ``path``, which must not exist (``FileExistsError``)."""
    try:
        os.link(staging, path)  # atomic: fails if path exists
    except FileExistsError:
        raise
    except OSError:  # no hard links here: check, then rename
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(staging, path)
        return
    staging.unlink()

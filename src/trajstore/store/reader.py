"""Reading flat leaves of a run file by index."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the zstd filter, so compressed runs read)
import numpy as np

from trajstore.bounds import MAX_JSON_DEPTH, loads_json
from trajstore.errors import (
    FailedPreconditionError,
    FrameIndexError,
    GroupNotFoundError,
    NotOpenError,
    RunDamagedError,
    SchemaError,
    StorageError,
    TrajstoreError,
)
from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.store import layout
from trajstore.store.indexing import Plan, plan_index
from trajstore.store.naming import group_paths, run_names
from trajstore.store.opening import open_for_reading

__all__ = ["RunFileReader"]

_FRAMES_NAME = layout.ATTR_FRAMES.encode()


def _file_id(file: h5py.File, path: Path) -> tuple[int, int]:
    handle = file.id.get_vfd_handle()
    stat = os.fstat(handle) if isinstance(handle, int) else os.stat(path)
    return stat.st_dev, stat.st_ino


class RunFileReader:
    """One run file open for reading (also while another process writes it).

    Args:
        path: The run file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = open_for_reading(self.path)
        try:
            self.spec = self._read_spec()
        except TrajstoreError:
            self._file.close()
            raise
        except Exception as e:  # HDF5 failed to read metadata of a file that opened
            self._file.close()
            raise RunDamagedError(f"{self.path} is damaged: {e}") from e
        except BaseException:
            self._file.close()
            raise
        self._index = {g.name: i for i, g in enumerate(self.spec.groups)}
        #: Where each group's objects are in the file (see :mod:`~trajstore.store.naming`).
        self.names = run_names(self.spec, self.format)
        #: The file this handle has open, as (device, inode): a run put in
        #: place anew under its name (overwritten) is another file.
        self.file_id = _file_id(self._file, self.path)
        # Open handles, kept: looking a path up in HDF5 costs more than a small read.
        self._groups: dict[int, h5py.Group] = {}
        self._datasets: dict[tuple[int, int], h5py.Dataset] = {}
        self._frames_cache: dict[int, int] = {}
        self._generation_cache: int | None = None

    def _read_spec(self) -> RunSpec:
        attrs = self._file.attrs
        if layout.ATTR_FORMAT not in attrs:
            raise SchemaError(f"{self.path} is not a trajstore run file")
        version = int(attrs[layout.ATTR_FORMAT])
        if version not in layout.READABLE_FORMATS:
            raise SchemaError(
                f"{self.path} has format {version}; this trajstore reads formats "
                f"{', '.join(map(str, layout.READABLE_FORMATS))}"
            )
        #: The file's format version (:data:`~trajstore.store.layout.FORMAT_VERSION`).
        self.format = version
        try:
            names = loads_json(attrs[layout.ATTR_GROUP_NAMES], "group names")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise TypeError("group names are not a list of strings")
            groups = tuple(
                GroupSpec.from_json(
                    # A group's spec holds its structure description one level down.
                    loads_json(
                        self._file[path].attrs[layout.ATTR_GROUP_SPEC],
                        f"group {name} spec",
                        max_depth=MAX_JSON_DEPTH + 1,
                    )
                )
                for name, path in zip(names, group_paths(names, version), strict=True)
            )
            total = int(attrs[layout.ATTR_TOTAL_STEPS])
            return RunSpec(
                groups=groups,
                config_structure=loads_json(
                    attrs[layout.ATTR_CONFIG_STRUCTURE], "config structure"
                ),
                metadata_json=str(attrs[layout.ATTR_METADATA]),
                total_steps=None if total < 0 else total,
            )
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise SchemaError(f"{self.path}: damaged trajstore metadata ({e})") from e

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    @property
    def left_open(self) -> bool:
        """Whether the file was open for writing when this handle opened it.

        By a live writer, or left so by a killed one: read with SWMR.
        """
        return bool(self._file.swmr_mode)

    @property
    def created(self) -> float | None:
        """When the run was created (Unix time), if the file records it."""
        value = self._file.attrs.get(layout.ATTR_CREATED)
        return None if value is None else float(value)

    def generation(self, *, cached: bool = False) -> int:
        """The run's version (:func:`~trajstore.store.layout.new_generation`); ``0``: unknown.

        Args:
            cached: Reuse the value read by an earlier call with ``cached``
                (as for :meth:`frames`).
        """
        if cached and self._generation_cache is not None:
            return self._generation_cache
        self._check_open()
        value = self._file.attrs.get(layout.ATTR_GENERATION)
        generation = 0 if value is None else int(value)
        if cached:
            self._generation_cache = generation
        return generation

    @property
    def actual_steps(self) -> int:
        """Steps the writer reported, as of its last flush."""
        return int(self._file.attrs[layout.ATTR_ACTUAL_STEPS])

    def group_index(self, name: str) -> int:
        """Position of group ``name``; :class:`GroupNotFoundError` if absent."""
        try:
            return self._index[name]
        except (KeyError, TypeError):
            raise GroupNotFoundError(
                f"no group {name!r} in {self.path.name}; groups: {self.spec.group_names}"
            ) from None

    def frames(self, group: int, *, cached: bool = False) -> int:
        """Frames of ``group`` that the writer has made durable.

        Args:
            group: Group position.
            cached: Reuse the count read by an earlier call with ``cached``
                -- for a caller that knows nobody writes the file while this
                handle is open (the store, for a run without a writer).
        """
        if cached and group in self._frames_cache:
            return self._frames_cache[group]
        # The attribute through h5py's low-level API: a third of the time of
        # ``attrs[...]``, and asked for on every read of a run being written.
        self._check_open()
        try:
            attribute = h5py.h5a.open(self._group(group).id, _FRAMES_NAME)
        except KeyError:
            name = self.spec.groups[group].name
            raise SchemaError(f"{self.path}: group {name} has no frame count") from None
        count = np.empty((), np.int64)
        attribute.read(count)
        if cached:
            self._frames_cache[group] = int(count)
        return int(count)

    def _check_open(self) -> None:
        if not self._file.id.valid:
            raise NotOpenError(f"{self.path.name} is closed; read inside the reader's `with` block")

    def _group(self, group: int) -> h5py.Group:
        handle = self._groups.get(group)
        if handle is None:
            handle = self._groups[group] = self._file[self.names[group].path]
        return handle

    def _dataset(self, group: int, leaf: int, frames: int | None) -> tuple[h5py.Dataset, int]:
        """A leaf's dataset, refreshed to show ``frames`` frames, and that frame count."""
        self._check_open()
        spec = self.spec.groups[group]
        if frames is None:
            frames = self.frames(group)
        if not spec.time_axis and frames == 0:
            raise FrameIndexError(f"{spec.name} was never written (it logs at step 0 only)")
        ds = self._datasets.get((group, leaf))
        if ds is None:
            ds = self._datasets[(group, leaf)] = self._open_dataset(group, leaf)
        if spec.time_axis and ds.shape[0] < frames:
            ds.refresh()
        return ds, frames

    def _open_dataset(self, group: int, leaf: int) -> h5py.Dataset:
        """A leaf's dataset; one of an uncompressed group reads around the chunk cache.

        HDF5 reads an uncompressed chunk that does not fit its chunk cache
        straight into the result, and one that fits into the cache first. A
        cache of no bytes thus saves a copy of every chunk read, and for one
        frame of an MD leaf (chunks of two frames) reading the other frame:
        44 -> 24 us per frame, 2.4 -> 3.0 GB/s for many (BENCHMARKS.md item
        21). Compressed groups keep the file's cache: there a chunk
        decompressed once serves the reads of its neighbouring frames. (HDF5
        keeps the settings of a dataset's first opening while it is open.)
        """
        spec = self.spec.groups[group]
        name = self.names[group].datasets[leaf]
        if spec.compression is not None:
            return self._group(group)[name]
        access = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
        access.set_chunk_cache(0, 0, 1.0)
        opened = h5py.h5d.open(self._group(group).id, name.encode(), dapl=access)
        return h5py.Dataset(opened, readonly=True)  # read-only: h5py caches its shape

    def plan(self, group: int, leaf: int, index: Any, frames: int) -> Plan:
        """How ``array[index]`` of a leaf with ``frames`` frames reads (raises IndexError)."""
        spec = self.spec.groups[group]
        shape = ((frames,) if spec.time_axis else ()) + spec.leaves[leaf].shape
        return plan_index(index, shape)

    def _read(self, ds: h5py.Dataset, leaf: LeafSpec, plan: Plan) -> np.ndarray:
        """``plan``'s result; never a short one.

        Raises:
            FailedPreconditionError: The dataset shrank since the read was
                planned (its writer rewrote frames it had: a resend after a
                reconnect, or a restart from a checkpoint); h5py would have
                returned fewer rows, or failed on an index past the new end.
        """
        try:
            data = np.asarray(ds[plan.hyperslab])
        except OSError as e:
            raise StorageError(f"reading {ds.name} failed: {e}") from e
        except IndexError:  # only an index past the end: the dataset shrank since planned
            raise _rewritten(ds) from None
        if plan.needs_fixup:
            data = data[plan.fixup]
        if data.shape != plan.shape:
            raise _rewritten(ds)
        if data.dtype != leaf.np_dtype:
            data = data.view(leaf.np_dtype)
        return data

    def read(
        self,
        group: int,
        leaves: Sequence[int],
        index: Any,
        *,
        frames: int | None = None,
    ) -> list[Any]:
        """Read ``array[index]`` of each chosen leaf of ``group``.

        Args:
            group: Group position.
            leaves: Positions of the leaves to read.
            index: numpy basic index; on a time-axis group its first axis is
                the frame axis, limited to the frames written.
            frames: Frames to expose (default: as recorded in the file). The
                server passes the count it has acknowledged.
        """
        if frames is None:
            frames = self.frames(group)
        plans = [self.plan(group, leaf, index, frames) for leaf in leaves]
        return self.read_plans(group, leaves, plans, frames=frames)

    def read_plans(
        self, group: int, leaves: Sequence[int], plans: Sequence[Plan], *, frames: int
    ) -> list[Any]:
        """:meth:`read` of indices already planned (:meth:`plan`) for ``frames`` frames."""
        out = []
        for leaf, plan in zip(leaves, plans, strict=True):
            ds, _ = self._dataset(group, leaf, frames)
            data = self._read(ds, self.spec.groups[group].leaves[leaf], plan)
            out.append(data[()] if plan.scalar else data)
        return out

    def read_chunks(
        self, group: int, leaf: int, plan: Plan, *, frames: int | None, chunk_bytes: int
    ) -> Iterator[np.ndarray]:
        """The result of ``plan`` (see :meth:`plan`) in C-order pieces of about ``chunk_bytes``.

        Pieces split the result's first axis, so holding one at a time bounds
        memory however large the read.
        """
        for piece in self.piece_plans(group, leaf, plan, chunk_bytes):
            yield self.read_piece(group, leaf, piece, frames=frames)

    def piece_plans(self, group: int, leaf: int, plan: Plan, chunk_bytes: int) -> Iterator[Plan]:
        """``plan`` split along the result's first axis into plans of about ``chunk_bytes``.

        Reading the pieces in order with :meth:`read_piece` gives the result
        of ``plan`` in C order. Planning needs nothing from the file: a caller
        may plan under one handle and read each piece under another.
        """
        spec = self.spec.groups[group].leaves[leaf]
        first = plan.hyperslab[0] if plan.hyperslab else None
        row_bytes = math.prod(plan.shape[1:]) * spec.np_dtype.itemsize
        if (
            not isinstance(first, slice)
            or not plan.shape
            or plan.shape[0] * row_bytes <= chunk_bytes
        ):
            yield plan
            return
        rows = range(first.start, first.stop, first.step)
        if plan.fixup[0].step == -1:
            rows = rows[::-1]
        per_piece = max(1, chunk_bytes // max(row_bytes, 1))
        for at in range(0, len(rows), per_piece):
            piece = rows[at : at + per_piece]
            low, high = min(piece[0], piece[-1]), max(piece[0], piece[-1])
            yield Plan(
                (slice(low, high + 1, abs(piece.step)), *plan.hyperslab[1:]),
                (slice(None, None, -1 if piece.step < 0 else None), *plan.fixup[1:]),
                (len(piece), *plan.shape[1:]),
                False,
            )

    def read_piece(self, group: int, leaf: int, plan: Plan, *, frames: int | None) -> np.ndarray:
        """``plan``'s result as a C-contiguous array (a scalar's too: 0-d)."""
        ds, _ = self._dataset(group, leaf, frames)
        return np.ascontiguousarray(self._read(ds, self.spec.groups[group].leaves[leaf], plan))


def _rewritten(ds: h5py.Dataset) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"{ds.name} was rewritten while it was being read (its writer replaced frames, "
        f"now {ds.shape[0] if ds.shape else 0}): read again"
    )

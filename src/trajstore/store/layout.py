"""The on-disk layout of a run file: names, attributes and chunking.

One HDF5 file per run. Root attributes: ``group_names`` (JSON list of
kUPS's group names), ``actual_steps``, ``trajstore_format``, ``metadata``
(JSON object), ``config_structure`` (JSON), ``total_steps`` (the writer's
hint, ``-1`` if none), ``created`` (Unix time) and ``generation`` (the
version of the run: see :func:`new_generation`; files written before it
read as ``0``). One HDF5 group per logging group, holding one dataset per
leaf and the attributes ``spec`` (the :class:`~trajstore.schema.GroupSpec`
as JSON), ``paths`` (dataset names in leaf order) and ``frames`` (frames
written). Names: :mod:`.naming`.

Format 2 lays each group out as netCDF-4 does, so that h5netcdf, xarray,
``ncdump`` and ``h5dump`` read a closed run without trajstore: the time
axis is the unlimited dimension ``frame``, every leaf axis a dimension of
its own (HDF5 dimension scales that are not variables), and where the
group logs every n steps, the variable ``step`` (int64, along ``frame``)
holds each frame's step and the leaves name it in their ``coordinates``
attribute. Format 1 (kUPS's bracketed names, no dimensions) still reads
and appends.

Datasets with a time axis start empty and grow as frames arrive, so a file
never shows preallocated frames. Chunks hold about
``Compression.target_chunk_bytes``; the writer writes whole chunks at a time
(its block size is a multiple of every chunk length in the group), so a
compressed chunk is normally written once rather than rewritten at every
flush.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from typing import Any

from trajstore import bounds
from trajstore.compression import DEFAULT_TARGET_CHUNK_BYTES, Compression
from trajstore.schema import GroupSpec, LeafSpec, RunSpec, storage_dtype

__all__ = [
    "FORMAT_VERSION",
    "LIBVER",
    "batch_frames",
    "chunk_shape",
    "dataset_kwargs",
    "new_generation",
    "run_attrs",
    "step_chunk_frames",
    "step_interval",
]

#: Version of the layout described above, which new files get.
FORMAT_VERSION = 2
#: The versions this trajstore reads and appends to; readers refuse newer files.
READABLE_FORMATS = (1, 2)

#: Lowest library version that allows SWMR, and that Debian bookworm's
#: HDF5 1.10 tools still read (``"latest"`` alone writes files they do not).
LIBVER = ("v110", "latest")

ATTR_FORMAT = "trajstore_format"
ATTR_GROUP_NAMES = "group_names"
ATTR_ACTUAL_STEPS = "actual_steps"
ATTR_METADATA = "metadata"
ATTR_CONFIG_STRUCTURE = "config_structure"
ATTR_TOTAL_STEPS = "total_steps"
ATTR_CREATED = "created"
ATTR_GENERATION = "generation"
ATTR_GROUP_SPEC = "spec"
ATTR_PATHS = "paths"
ATTR_FRAMES = "frames"
ATTR_DTYPE = "dtype"
ATTR_UNITS = "units"

#: A block write aims at this many bytes per group ...
BLOCK_TARGET_BYTES = 1 << 22
#: ... and buffers at most this many frames (bounds latency for tiny frames).
MAX_BATCH_FRAMES = 4096
#: Frames a time-axis group can hold (see :data:`trajstore.bounds.MAX_FRAMES`).
MAX_FRAMES = bounds.MAX_FRAMES


def _pow2_floor(value: int) -> int:
    return 1 << (max(value, 1).bit_length() - 1)


def batch_frames(group: GroupSpec) -> int:
    """Frames the writer buffers per block write of ``group``.

    A power of two, so that every leaf's chunk length (also a power of two,
    and never larger) divides it: block writes then cover whole chunks.
    """
    if not group.time_axis:
        return 1
    per_frame = max(group.frame_nbytes, 1)
    return min(_pow2_floor(BLOCK_TARGET_BYTES // per_frame), MAX_BATCH_FRAMES)


def _slab(shape: tuple[int, ...], itemsize: int, budget_bytes: int) -> tuple[int, ...]:
    """Largest C-contiguous slab of ``shape`` that fits ``budget_bytes`` (>= 1 per axis)."""
    dims = [max(d, 1) for d in shape]
    budget = max(budget_bytes // max(itemsize, 1), 1)
    chunk = [1] * len(dims)
    inner = 1
    for axis in range(len(dims) - 1, -1, -1):
        if inner * dims[axis] <= budget:
            chunk[axis] = dims[axis]
            inner *= dims[axis]
        else:
            chunk[axis] = max(1, budget // inner)
            break
    return tuple(chunk)


def chunk_shape(
    leaf: LeafSpec, time_axis: bool, group_batch: int, compression: Compression | None
) -> tuple[int, ...] | None:
    """Chunk shape of ``leaf``'s dataset, or ``None`` for contiguous storage."""
    target = compression.target_chunk_bytes if compression else DEFAULT_TARGET_CHUNK_BYTES
    itemsize = storage_dtype(leaf.dtype).itemsize
    if not time_axis:
        if not leaf.shape or compression is None:
            return None
        return _slab(leaf.shape, itemsize, target)
    frame = max(leaf.frame_nbytes, 1)
    if frame <= target:
        frames = min(_pow2_floor(target // frame), group_batch)
        return (frames, *(max(d, 1) for d in leaf.shape))
    return (1, *_slab(leaf.shape, itemsize, target))


def dataset_kwargs(leaf: LeafSpec, group: GroupSpec) -> dict[str, Any]:
    """``create_dataset`` keyword arguments for ``leaf`` of ``group``."""
    time = (0,) if group.time_axis else ()
    shape = time + leaf.shape
    kwargs: dict[str, Any] = {"shape": shape, "dtype": storage_dtype(leaf.dtype)}
    chunks = chunk_shape(leaf, group.time_axis, batch_frames(group), group.compression)
    if chunks is not None:
        kwargs["chunks"] = chunks
        # A zero-length axis cannot hold a chunk of length 1 unless it may grow.
        kwargs["maxshape"] = tuple(
            None if (i == 0 and group.time_axis) or d == 0 else d for i, d in enumerate(shape)
        )
        if group.compression is not None and math.prod(leaf.shape) > 0:
            kwargs.update(group.compression.filter_kwargs())
    return kwargs


def step_interval(group: GroupSpec) -> int | None:
    """``n`` of a group that logs every ``n`` steps (frame ``i`` is step ``i * n``); else ``None``.

    Only such groups have a ``step`` variable: the step of a frame of a
    custom frequency is not known where frames are written.
    """
    frequency = group.frequency
    if not group.time_axis or frequency.get("kind") != "every_n_step":
        return None
    n = frequency.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def step_chunk_frames(group: GroupSpec) -> int:
    """Chunk length of a group's ``step`` variable: whole blocks, and never tiny."""
    return max(batch_frames(group), 512)


def new_generation() -> int:
    """A fresh generation for a new or overwritten run.

    A run's generation names one version of its frames: it is new whenever
    the run is created or overwritten (random, so an overwritten run never
    takes back an earlier value), and goes up by one whenever a writer
    rewrites frames already stored (a restart from a checkpoint). Readers
    that span calls check it to never join frames of two versions. ``0``
    stands for "unknown" (a file written before generations).
    """
    return secrets.randbits(62) + 1


def run_attrs(spec: RunSpec) -> dict[str, Any]:
    """Root attributes of a new run file."""
    return {
        ATTR_FORMAT: FORMAT_VERSION,
        ATTR_GROUP_NAMES: json.dumps(spec.group_names),
        ATTR_ACTUAL_STEPS: 0,
        ATTR_METADATA: spec.metadata_json,
        ATTR_CONFIG_STRUCTURE: json.dumps(spec.config_structure),
        ATTR_TOTAL_STEPS: -1 if spec.total_steps is None else spec.total_steps,
        ATTR_CREATED: time.time(),
        ATTR_GENERATION: new_generation(),
    }

"""A run's group as an :class:`xarray.Dataset`, read lazily from a local file or the store.

Three ways in, one result::

    xr.open_dataset("run.h5", engine="trajstore", group="traj")
    xr.open_dataset("trajstore://host:port/project/run-7", engine="trajstore", group="traj")
    reader.focus_group("traj").to_xarray()

A variable per leaf (named as in the file's format 2: ``pos``; a nested leaf
``a.b``), dimensions ``frame`` and ``<leaf>_dim<i>``, the ``step``
coordinate for groups that log every n steps, the run's metadata in
``attrs``. Variables are lazily indexed: ``ds.pos.isel(frame=slice(None,
None, 100))`` reads only those frames. With ``chunks=`` they are dask arrays
whose tasks each read whole stored chunks, about :data:`TASK_BYTES`.

Dask graphs pickle: each variable carries where its run is (a path, or an
address and run name), never an open handle, and a worker process opens
the run itself. A token given to ``open_dataset`` is used here only; a
worker takes ``TRAJSTORE_TOKEN`` from its own environment, unless
``embed_token=True`` puts the token into the graph.

The frames are those written when the dataset was opened; a run still
being written keeps its length here. Reads from the store are pinned to
the run's version then: a run overwritten since raises
:class:`~trajstore.errors.RunChangedError` instead of mixing two versions.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from trajstore.client.reader import Client, RemoteLeaves
from trajstore.errors import (
    GroupNotFoundError,
    InvalidArgumentError,
    RunChangedError,
    RunNotFoundError,
    SchemaError,
)
from trajstore.local import FileLeaves
from trajstore.locations import (
    SCHEME,
    Handle,
    RunLocation,
    close_handle,
    handle_of,
    register,
    release,
)
from trajstore.reading import GroupReader, group_position
from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.store import layout
from trajstore.store.naming import FRAME_DIM, STEP_VARIABLE, group_names, group_paths
from trajstore.store.reader import RunFileReader

__all__ = [
    "TASK_BYTES",
    "LeafArray",
    "TrajstoreBackendEntrypoint",
    "group_dataset",
    "open_group",
    "open_runs",
]


class LeafArray(BackendArray):
    """One leaf of a group, read on indexing (numpy basic indexing: ints and slices).

    Holds only plain data, so it pickles; reads go through this process's
    handle of its :class:`RunLocation`.
    """

    def __init__(
        self,
        location: RunLocation,
        group: int,
        leaf: int,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        frames: int | None,
        generation: int,
    ) -> None:
        self.location = location
        self.group = group
        self.leaf = leaf
        self.shape = shape
        self.dtype = dtype
        #: Frames when the dataset was opened (``None``: no time axis).
        self.frames = frames
        self.generation = generation

    def __getitem__(self, key: indexing.ExplicitIndexer) -> Any:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._read
        )

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        opened = handle_of(self.location)
        handle = opened.handle
        if isinstance(handle, RunFileReader):
            with opened.lock:  # one HDF5 handle: its dataset cache is not for threads
                self._check_generation(handle)
                array = handle.read(self.group, [self.leaf], key, frames=self.frames)[0]
        else:
            source = RemoteLeaves(handle, self.group, self.generation)
            array = source.read([self.leaf], key)[0]
        return np.asarray(array)

    def _check_generation(self, handle: RunFileReader) -> None:
        """Refuse a local run that is another version than the dataset's (a worker's handle).

        The store pins reads to a generation itself; a file opened anew by
        a worker after the run was overwritten or rewound must not be read.
        """
        now = handle.generation()
        if self.generation and now != self.generation:
            raise RunChangedError(
                f"{self.location.label} changed since the dataset was opened; open it again",
                old_generation=self.generation,
                new_generation=now,
            )


def _variable_names(path: str, spec: GroupSpec) -> tuple[list[str], list[tuple[str, ...]]]:
    """Each leaf's variable name and leaf-axis dimensions, unique in one flat namespace.

    The file's names (format 2) with ``/`` as ``.`` (a nested leaf ``a/b``
    is ``a.b``, its axes ``a.b_dim0``); where that makes a name twice, the
    later one is numbered.
    """
    names = group_names(
        path, [leaf.path for leaf in spec.leaves], [leaf.shape for leaf in spec.leaves], 2
    )
    taken = {FRAME_DIM, STEP_VARIABLE}
    variables: list[str] = []
    dims: list[tuple[str, ...]] = []
    for dataset, leaf_dims in zip(names.datasets, names.dims, strict=True):
        variable = _unique(dataset.replace("/", "."), taken)
        nested = "/" in dataset
        variables.append(variable)
        dims.append(
            tuple(
                _unique(f"{variable}_dim{axis}" if nested else dim, taken)
                for axis, dim in enumerate(leaf_dims)
            )
        )
    return variables, dims


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate


def _attrs(run: RunSpec, spec: GroupSpec, label: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "run": label,
        "group": spec.name,
        "frequency": json.dumps(dict(spec.frequency)),
        "trajstore_metadata": run.metadata_json,
    }
    for key, value in run.metadata.items():
        if key not in attrs and isinstance(value, str | int | float | bool):
            attrs[key] = value
    return attrs


def _dataset(
    location: RunLocation,
    run: RunSpec,
    position: int,
    frames: int,
    generation: int,
    drop_variables: Iterable[str] = (),
) -> xr.Dataset:
    spec = run.groups[position]
    path = group_paths(run.group_names, 2)[position]
    names, dims = _variable_names(path, spec)
    dropped = set(drop_variables)
    batch = layout.batch_frames(spec)
    variables = {}
    for leaf_index, (leaf, name, leaf_dims) in enumerate(
        zip(spec.leaves, names, dims, strict=True)
    ):
        if name in dropped:
            continue
        time = (frames,) if spec.time_axis else ()
        axes = ((FRAME_DIM,) if spec.time_axis else ()) + leaf_dims
        array = LeafArray(
            location,
            position,
            leaf_index,
            time + leaf.shape,
            leaf.np_dtype,
            frames if spec.time_axis else None,
            generation,
        )
        encoding: dict[str, Any] = {}
        chunks = _task_chunks(leaf, spec, batch, frames)
        if chunks is not None:
            encoding["preferred_chunks"] = dict(zip(axes, chunks, strict=True))
        variables[name] = xr.Variable(
            axes,
            indexing.LazilyIndexedArray(array),
            attrs={"trajstore_leaf": leaf.path or "<value>"}
            | ({"units": leaf.units} if leaf.units else {}),
            encoding=encoding,
        )
    coords = {}
    interval = layout.step_interval(spec)
    if interval is not None and STEP_VARIABLE not in dropped:
        coords[STEP_VARIABLE] = xr.Variable(
            (FRAME_DIM,), np.arange(frames, dtype=np.int64) * interval
        )
    return xr.Dataset(variables, coords=coords, attrs=_attrs(run, spec, location.label))


#: A dask task reads whole stored chunks, about this many bytes.
TASK_BYTES = 8 << 20


def _task_chunks(
    leaf: LeafSpec, spec: GroupSpec, batch: int, frames: int
) -> tuple[int, ...] | None:
    """Chunks for dask: whole stored chunks, as many frames of them as fill :data:`TASK_BYTES`.

    A stored chunk holds about 256 KiB; a task of its own each would spend
    more on scheduling and a call to the store than on reading.
    """
    stored = layout.chunk_shape(leaf, spec.time_axis, batch, spec.compression)
    if stored is None or not spec.time_axis or tuple(stored[1:]) != leaf.shape:
        return stored
    chunk_bytes = max(math.prod(stored) * leaf.np_dtype.itemsize, 1)
    per_task = stored[0] * max(TASK_BYTES // chunk_bytes, 1)
    return (min(per_task, max(frames, stored[0])), *stored[1:])


def _pick_group(run: RunSpec, group: str | None, label: str) -> int:
    if group is None:
        if len(run.groups) == 1:
            return 0
        raise GroupNotFoundError(
            f"{label} has {len(run.groups)} groups: choose one with group= among "
            f"{group_paths(run.group_names, 2)}"
        )
    return group_position(run, group, label)


def _open(
    location: RunLocation, handle: Handle, group: str | None, *, owned: bool, **kw: Any
) -> xr.Dataset:
    """The dataset of ``group`` of the run open as ``handle``, registered under ``location``."""
    try:
        position = _pick_group(handle.spec, group, location.label)
        if isinstance(handle, RunFileReader):
            frames, generation = handle.frames(position), handle.generation()
        else:
            info = handle.version()
            frames, generation = info.frames[handle.spec.groups[position].name], info.generation
        dataset = _dataset(location, handle.spec, position, frames, generation, **kw)
    except BaseException:
        if owned:
            close_handle(handle)
        raise
    register(location, handle, owned=owned)
    dataset.set_close(lambda: release(location))
    return dataset


def group_dataset(reader: GroupReader[Any]) -> xr.Dataset:
    """The group a local or remote :class:`~trajstore.GroupReader` reads, as a lazy Dataset.

    Reads go through the reader's own open run (keep it open while using
    the dataset); dask workers in other processes open the run themselves.

    Raises:
        InvalidArgumentError: The reader reads neither a local file nor a store.
    """
    source = reader.source
    if isinstance(source, FileLeaves):
        location = RunLocation(path=os.path.abspath(source.file.path))
        return _open(location, source.file, reader.name, owned=False)
    if isinstance(source, RemoteLeaves):
        remote = source.reader
        tls_ca = None if remote.tls_ca is None else os.fspath(remote.tls_ca)
        location = RunLocation(address=remote.address, run=remote.run, tls_ca=tls_ca)
        return _open(location, remote, reader.name, owned=False)
    raise InvalidArgumentError(
        f"to_xarray() reads local and remote groups, not {type(source).__name__}"
    )


def open_group(
    target: str | os.PathLike[str],
    group: str | None = None,
    *,
    token: str | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    embed_token: bool = False,
    drop_variables: Iterable[str] = (),
) -> xr.Dataset:
    """Open ``group`` of a run file or ``trajstore://`` run (what ``engine="trajstore"`` does).

    Args:
        target: A run file's path, or ``trajstore://host:port/run/name``.
        group: The group's path (``"traj"``) or name; ``None`` for a run of one group.
        token: For a store: the bearer token (default: ``TRAJSTORE_TOKEN``).
        tls_ca: For a store: CA certificate (PEM) for TLS.
        embed_token: Put ``token`` into dask graphs (see the module docstring).
        drop_variables: Leaves to leave out, by variable name.
    """
    location = RunLocation.parse(target, tls_ca=tls_ca, token=token if embed_token else None)
    handle = location.open(token)
    return _open(location, handle, group, owned=True, drop_variables=drop_variables)


class TrajstoreBackendEntrypoint(BackendEntrypoint):
    """``xr.open_dataset(path_or_url, engine="trajstore", group=...)``."""

    description = "trajstore runs: local run files and trajstore://host:port/run URLs"
    url = "https://github.com/trajstore/trajstore#analysis-with-xarray-and-dask"
    open_dataset_parameters = (
        "filename_or_obj",
        "drop_variables",
        "group",
        "token",
        "tls_ca",
        "embed_token",
    )

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: str | os.PathLike[str],
        *,
        drop_variables: str | Iterable[str] | None = None,
        group: str | None = None,
        token: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        embed_token: bool = False,
    ) -> xr.Dataset:
        """Open ``group`` of the run at ``filename_or_obj`` (a path or a ``trajstore://`` URL)."""
        dropped = [drop_variables] if isinstance(drop_variables, str) else drop_variables or ()
        return open_group(
            filename_or_obj,
            group,
            token=token,
            tls_ca=tls_ca,
            embed_token=embed_token,
            drop_variables=dropped,
        )

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """Only ``trajstore://`` URLs: a local ``.h5`` is claimed by ``engine="trajstore"``."""
        return isinstance(filename_or_obj, str) and filename_or_obj.startswith(f"{SCHEME}://")


def open_runs(
    source: str | os.PathLike[str],
    prefix: str = "",
    group: str | None = None,
    *,
    chunks: Any = None,
    token: str | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    embed_token: bool = False,
) -> xr.Dataset:
    """One group of many runs as one Dataset, with a ``run`` dimension.

    Args:
        source: A directory of run files (runs are their paths below it,
            without ``.h5``), or a store's address.
        prefix: Only runs whose name starts with it.
        group: The group to read (every run must have it, with equal shapes).
        chunks: As for :func:`xarray.open_dataset` (``{}``: whole stored chunks).
        token: For a store: the bearer token (default: ``TRAJSTORE_TOKEN``).
        tls_ca: For a store: CA certificate (PEM) for TLS.
        embed_token: Put ``token`` into dask graphs (see the module docstring).

    Raises:
        RunNotFoundError: No run matched (or ``source`` looks like a path but
            is no directory).
        SchemaError: The runs' groups differ in shape.
    """
    text = os.fspath(source)
    directory = Path(text)
    targets: list[str] = []
    runs: list[str] = []
    if directory.is_dir():
        for path in sorted(directory.rglob("*.h5")):
            name = path.relative_to(directory).with_suffix("").as_posix()
            if name.startswith(prefix):
                runs.append(name)
                targets.append(str(path))
    elif os.sep in text or text.startswith("."):
        raise RunNotFoundError(f"no directory {text}")
    else:
        with Client(text, token=token, tls_ca=tls_ca) as client:
            runs = [info.name for info in client.list_runs(prefix)]
        targets = [f"{SCHEME}://{text}/{run}" for run in runs]
    if not runs:
        raise RunNotFoundError(f"no run in {text} starts with {prefix!r}")
    datasets: list[xr.Dataset] = []
    try:
        for target in targets:
            datasets.append(
                xr.open_dataset(
                    target,
                    engine=TrajstoreBackendEntrypoint,
                    group=group,
                    chunks=chunks,
                    token=token,
                    tls_ca=tls_ca,
                    embed_token=embed_token,
                )
            )
        _check_equal_shapes(runs, datasets)
        combined = xr.concat(
            datasets,
            dim=xr.Variable("run", np.array(runs, dtype=object)),
            combine_attrs="drop_conflicts",
        )
    except BaseException:
        for dataset in datasets:
            dataset.close()
        raise

    def close() -> None:
        for dataset in datasets:
            dataset.close()

    combined.set_close(close)
    return combined


def _check_equal_shapes(runs: Sequence[str], datasets: Sequence[xr.Dataset]) -> None:
    first = dict(datasets[0].sizes)
    for run, dataset in zip(runs, datasets, strict=True):
        if dict(dataset.sizes) != first:
            raise SchemaError(
                f"runs differ in shape: {runs[0]} has {first}, {run} has {dict(dataset.sizes)}; "
                f"open them one by one (or select frames) to combine them"
            )

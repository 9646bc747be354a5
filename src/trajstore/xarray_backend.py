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
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from trajstore.client.reader import Client, RemoteLeaves, RemoteStorageReader
from trajstore.errors import GroupNotFoundError, NotOpenError
from trajstore.local import FileLeaves
from trajstore.reading import GroupReader, group_position
from trajstore.schema import GroupSpec, LeafSpec, RunSpec
from trajstore.store import layout
from trajstore.store.naming import FRAME_DIM, STEP_VARIABLE, group_names, group_paths
from trajstore.store.reader import RunFileReader

__all__ = ["RunLocation", "TrajstoreBackendEntrypoint", "group_dataset", "open_runs"]

#: The URL scheme of runs on a store: ``trajstore://host:port/run/name``.
SCHEME = "trajstore"

Handle = RunFileReader | RemoteStorageReader


@dataclass(frozen=True)
class RunLocation:
    """Where a run is, as plain data that pickles into a dask graph.

    Attributes:
        path: A local run file; or
        address: the store (``host:port``, a comma list, a ``dns:///`` name)
            and ``run`` the run's name there.
        tls_ca: CA certificate (PEM) for TLS to the store.
        token: Only where the caller asked to put it into the graph;
            otherwise a process that opens the run uses ``TRAJSTORE_TOKEN``.
        opening: Tells apart two openings of one run (each has its own
            handle in the process that opened it).
    """

    path: str | None = None
    address: str | None = None
    run: str | None = None
    tls_ca: str | None = None
    token: str | None = field(default=None, repr=False)
    opening: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def label(self) -> str:
        """How users name the run: its path, or ``trajstore://address/run``."""
        return self.path if self.path is not None else f"{SCHEME}://{self.address}/{self.run}"

    def open(self) -> Handle:
        """Open the run (in the process that reads it)."""
        if self.path is not None:
            return RunFileReader(self.path)
        if self.address is None or self.run is None:
            raise ValueError("a RunLocation needs a path, or an address and a run")
        return RemoteStorageReader(
            self.address, self.run, token=self.token, tls_ca=self.tls_ca
        ).__enter__()


@dataclass
class _Opened:
    """A handle open in one process, and whether closing the dataset closes it."""

    pid: int
    handle: Handle
    owned: bool
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handles:
    """The open handle of each :class:`RunLocation` in this process.

    The process that opened a dataset registers its handle; another process
    (a dask worker: the location arrived pickled) opens its own on first
    use. A forked child never uses its parent's handles. Reading a dataset
    after closing it, in the process that opened it, raises
    :class:`~trajstore.errors.NotOpenError` instead of opening the run again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[RunLocation, _Opened] = {}
        self._closed: set[tuple[int, RunLocation]] = set()

    def register(self, location: RunLocation, handle: Handle, *, owned: bool) -> None:
        with self._lock:
            self._open[location] = _Opened(os.getpid(), handle, owned)

    def get(self, location: RunLocation) -> _Opened:
        pid = os.getpid()
        with self._lock:
            opened = self._open.get(location)
            if opened is not None and opened.pid == pid:
                return opened
            if (pid, location) in self._closed:
                raise NotOpenError(f"the dataset of {location.label} was closed")
            opened = self._open[location] = _Opened(pid, location.open(), owned=True)
            return opened

    def release(self, location: RunLocation) -> None:
        with self._lock:
            opened = self._open.pop(location, None)
            self._closed.add((os.getpid(), location))
        if opened is not None and opened.pid == os.getpid() and opened.owned:
            _close(opened.handle)


def _close(handle: Handle) -> None:
    if isinstance(handle, RunFileReader):
        handle.close()
    else:
        handle.__exit__(None, None, None)


_HANDLES = _Handles()


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
        opened = _HANDLES.get(self.location)
        handle = opened.handle
        if isinstance(handle, RunFileReader):
            with opened.lock:  # one HDF5 handle: its dataset cache is not for threads
                array = handle.read(self.group, [self.leaf], key, frames=self.frames)[0]
        else:
            source = RemoteLeaves(handle, self.group, self.generation)
            array = source.read([self.leaf], key)[0]
        return np.asarray(array)


def _variable_names(path: str, spec: GroupSpec) -> tuple[list[str], list[tuple[str, ...]]]:
    """Each leaf's variable name and leaf-axis dimensions (format 2's names, ``/`` -> ``.``)."""
    names = group_names(
        path, [leaf.path for leaf in spec.leaves], [leaf.shape for leaf in spec.leaves], 2
    )
    return [d.replace("/", ".") for d in names.datasets], list(names.dims)


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
            _close(handle)
        raise
    _HANDLES.register(location, handle, owned=owned)
    dataset.set_close(lambda: _HANDLES.release(location))
    return dataset


def group_dataset(reader: GroupReader[Any]) -> xr.Dataset:
    """The group a local or remote :class:`~trajstore.GroupReader` reads, as a lazy Dataset.

    Reads go through the reader's own open run (keep it open while using
    the dataset); dask workers in other processes open the run themselves.
    """
    source = reader.source
    if isinstance(source, FileLeaves):
        location = RunLocation(path=str(source.file.path))
        return _open(location, source.file, reader.name, owned=False)
    if isinstance(source, RemoteLeaves):
        remote = source.reader
        tls_ca = None if remote.tls_ca is None else os.fspath(remote.tls_ca)
        location = RunLocation(address=remote.address, run=remote.run, tls_ca=tls_ca)
        return _open(location, remote, reader.name, owned=False)
    raise TypeError(f"to_xarray() reads local and remote groups, not {type(source).__name__}")


def _location_of(target: str | os.PathLike[str], tls_ca: Any, token: str | None) -> RunLocation:
    text = os.fspath(target)
    if text.startswith(f"{SCHEME}://"):
        parts = urlsplit(text)
        run = parts.path.lstrip("/")
        if not parts.netloc or not run:
            raise ValueError(f"{text!r}: expected {SCHEME}://host:port/run/name")
        return RunLocation(
            address=parts.netloc,
            run=run,
            tls_ca=None if tls_ca is None else os.fspath(tls_ca),
            token=token,
        )
    return RunLocation(path=text)


def open_group(
    target: str | os.PathLike[str],
    group: str | None = None,
    *,
    token: str | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    embed_token: bool = False,
    drop_variables: Iterable[str] = (),
) -> xr.Dataset:
    """Open ``group`` of a run file or ``trajstore://`` run (what ``engine="trajstore"`` does)."""
    location = _location_of(target, tls_ca, token if embed_token else None)
    handle = location.open() if token is None or embed_token else _open_with(location, token)
    return _open(location, handle, group, owned=True, drop_variables=drop_variables)


def _open_with(location: RunLocation, token: str) -> Handle:
    """Open ``location`` with a token that stays out of it (and so out of pickled graphs)."""
    if location.address is None or location.run is None:
        return location.open()
    return RemoteStorageReader(
        location.address, location.run, token=token, tls_ca=location.tls_ca
    ).__enter__()


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
        chunks: As for :func:`xarray.open_dataset` (``{}``: the stored chunks).
        token: For a store: the bearer token (default: ``TRAJSTORE_TOKEN``).
        tls_ca: For a store: CA certificate (PEM) for TLS.
        embed_token: Put ``token`` into dask graphs (see the module docstring).

    Raises:
        ValueError: No run matched, or the runs' groups differ in shape.
    """
    directory = Path(source)
    targets: list[str] = []
    runs: list[str] = []
    if directory.is_dir():
        for path in sorted(directory.rglob("*.h5")):
            name = path.relative_to(directory).with_suffix("").as_posix()
            if name.startswith(prefix):
                runs.append(name)
                targets.append(str(path))
    else:
        with Client(os.fspath(source), token=token, tls_ca=tls_ca) as client:
            runs = [info.name for info in client.list_runs(prefix)]
        targets = [f"{SCHEME}://{os.fspath(source)}/{run}" for run in runs]
    if not runs:
        raise ValueError(f"no run in {os.fspath(source)} starts with {prefix!r}")
    datasets = [
        xr.open_dataset(
            target,
            engine=TrajstoreBackendEntrypoint,
            group=group,
            chunks=chunks,
            token=token,
            tls_ca=tls_ca,
            embed_token=embed_token,
        )
        for target in targets
    ]
    _check_equal_shapes(runs, datasets)
    combined = xr.concat(
        datasets,
        dim=xr.Variable("run", np.array(runs, dtype=object)),
        combine_attrs="drop_conflicts",
    )

    def close() -> None:
        for dataset in datasets:
            dataset.close()

    combined.set_close(close)
    return combined


def _check_equal_shapes(runs: Sequence[str], datasets: Sequence[xr.Dataset]) -> None:
    first = dict(datasets[0].sizes)
    for run, dataset in zip(runs, datasets, strict=True):
        if dict(dataset.sizes) != first:
            for d in datasets:
                d.close()
            raise ValueError(
                f"runs differ in shape: {runs[0]} has {first}, {run} has {dict(dataset.sizes)}; "
                f"open them one by one (or select frames) to combine them"
            )

"""Local files: ``HDF5StorageWriter`` and ``HDF5StorageReader`` (kUPS API)."""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

import numpy as np

from trajstore.checks import check_positive
from trajstore.errors import NotOpenError, StepOrderError
from trajstore.extraction import EXTRACTIONS, Extraction, FrameExtractor
from trajstore.groups import prepare_groups
from trajstore.reading import GroupReader, group_position
from trajstore.schema import GroupSpec
from trajstore.store.background import DEFAULT_MAX_PENDING_BYTES, BackgroundWriter
from trajstore.store.open_run import open_run_writer
from trajstore.store.reader import RunFileReader
from trajstore.store.writer import OpenMode

__all__ = ["FileLeaves", "HDF5StorageReader", "HDF5StorageWriter"]

State = TypeVar("State")
Config = TypeVar("Config")


class StepClock:
    """Checks that logged steps are non-negative integers that increase.

    :meth:`check` validates a step without taking it; :meth:`commit` takes it
    once the step's frames were accepted, so a ``log()`` refused for bad
    input leaves its step free.
    """

    def __init__(self) -> None:
        self.last: int | None = None

    def check(self, step: int) -> int:
        """Validate ``step``; return it as an ``int``."""
        last = self.last
        if type(step) is int and step >= 0 and (last is None or step > last):
            return step  # the common case, checked at every log()
        if isinstance(step, bool | np.bool_):
            raise StepOrderError(f"step must be an integer, got {step!r}")
        try:
            value = operator.index(step)
        except TypeError:
            raise StepOrderError(f"step must be an integer, got {step!r}") from None
        if value < 0:
            raise StepOrderError(f"step must be non-negative, got {value}")
        if self.last is not None and value <= self.last:
            raise StepOrderError(f"steps must increase: got {value} after {self.last}")
        return value

    def commit(self, step: int) -> None:
        """Make ``step`` (checked) the latest."""
        self.last = step


class HDF5StorageWriter(Generic[State, Config]):
    """Logs simulation states to a local HDF5 file; a :class:`~trajstore.Logger`.

    ``log()`` runs the views, checks the frames and takes host copies, then
    returns; a :class:`~trajstore.BackgroundWriter` thread writes them in
    blocks. If more than ``max_pending_bytes`` wait to be written, ``log()``
    blocks until there is room. A background error is raised by the next
    ``log()``, ``flush()`` or ``__exit__``.

    Args:
        out_path: The HDF5 file to write.
        config: Pytree whose leaves are :class:`~trajstore.WriterGroupConfig`.
        initial_state: A state like the ones to be logged; fixes every
            group's leaves, shapes and dtypes.
        total_steps: Expected run length. Only a hint: runs may stop early
            or go on longer.
        compile_views: Compile the views with ``jax.jit``. Turn off for
            states that already live on the host (numpy).
        metadata: JSON-serialisable user metadata stored with the run.
        mode: ``"overwrite"`` (default, as kUPS), ``"create"`` (refuse an
            existing file) or ``"append"`` (resume a run written before).
        max_pending_bytes: Bound on logged bytes not yet written.
        flush_interval: If set, make data durable at least this often (seconds).
        extraction: How compiled views run at each step: ``"auto"`` (default:
            leaves a view only selects are copied from the state without
            XLA, the rest of every group due runs as one compiled call),
            ``"fused"`` (all of it in one compiled call) or ``"per_group"``
            (one compiled call per group). All write the same frames.
    """

    def __init__(
        self,
        out_path: str | os.PathLike[str],
        config: Config,
        initial_state: State,
        total_steps: int | None = None,
        *,
        compile_views: bool = True,
        metadata: Mapping[str, Any] | None = None,
        mode: OpenMode = "overwrite",
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        flush_interval: float | None = None,
        extraction: Extraction = "auto",
    ) -> None:
        if extraction not in EXTRACTIONS:
            raise ValueError(f"extraction must be one of {EXTRACTIONS}, got {extraction!r}")
        if mode not in ("create", "overwrite", "append"):
            raise ValueError(f"mode must be 'create', 'overwrite' or 'append', got {mode!r}")
        check_positive("max_pending_bytes", max_pending_bytes, integer=True)
        check_positive("flush_interval", flush_interval, optional=True)
        self.out_path = Path(out_path)
        self.config = config
        self.initial_state: State | None = initial_state
        self.total_steps = total_steps
        self.compile_views = compile_views
        self.metadata = metadata
        self.mode: OpenMode = mode
        self.max_pending_bytes = max_pending_bytes
        self.flush_interval = flush_interval
        self.extraction: Extraction = extraction
        self._extractor: FrameExtractor | None = None
        self._writer: BackgroundWriter | None = None
        self._clock = StepClock()
        #: Frames in the file per group (by name) when it was opened: ``append``
        #: resumes each from there.
        self.resumed_frames: dict[str, int] = {}

    def __enter__(self) -> HDF5StorageWriter[State, Config]:
        if self._writer is not None:
            raise NotOpenError("this writer is already open")
        if self.initial_state is None:  # let go of at the first __enter__
            raise NotOpenError("a writer opens once; create a new one to log again")
        groups, spec = prepare_groups(
            self.config,
            self.initial_state,
            self.total_steps,
            compile_views=self.compile_views,
            metadata=self.metadata,
        )
        extractor = FrameExtractor(
            groups, self.initial_state, compiled=self.compile_views, mode=self.extraction
        )
        file = open_run_writer(self.out_path, spec, mode=self.mode)
        self.resumed_frames = dict(zip(spec.group_names, file.frames, strict=True))
        self._writer = BackgroundWriter(
            file, max_pending_bytes=self.max_pending_bytes, flush_interval=self.flush_interval
        )
        self._extractor = extractor
        self._clock = StepClock()
        self.initial_state = None  # do not keep a whole state alive
        return self

    def log(self, state: State, step: int) -> None:
        """Queue what the config selects from ``state`` at ``step``."""
        writer = self._require_open()
        writer.raise_if_failed()
        step = self._clock.check(step)
        frames = self._require_extractor().frames(state, step)  # raises before anything is taken
        self._clock.commit(step)
        if frames:
            writer.submit_frames(frames)
        writer.set_actual_steps(step + 1)

    def flush(self) -> None:
        """Return once everything logged so far is written and flushed to disk."""
        self._require_open().flush()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            writer.close()
        except Exception as close_error:
            if exc is None:
                raise
            exc.add_note(f"trajstore: closing {self.out_path} also failed: {close_error!r}")

    def _require_open(self) -> BackgroundWriter:
        if self._writer is None:
            raise NotOpenError("log() and flush() work only inside the writer's `with` block")
        return self._writer

    def _require_extractor(self) -> FrameExtractor:
        if self._extractor is None:
            raise NotOpenError("log() works only inside the writer's `with` block")
        return self._extractor


class FileLeaves:
    """:class:`~trajstore.reading.LeafSource` over one group of a local run file."""

    def __init__(self, file: RunFileReader, position: int) -> None:
        #: The open run file.
        self.file = file
        self._position = position
        self.spec: GroupSpec = file.spec.groups[position]

    def frames(self) -> int:
        """Frames of the group in the file now."""
        return self.file.frames(self._position)

    def read(self, leaves: Sequence[int], index: Any) -> list[np.ndarray]:
        """``array[index]`` of each chosen leaf, from the file."""
        return self.file.read(self._position, leaves, index)


class HDF5StorageReader(Generic[Config]):
    """Reads a run file written by :class:`HDF5StorageWriter` (or by the store).

    Use as a context manager. Works on runs still being written (SWMR).

    Args:
        path: The run file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: RunFileReader | None = None

    def __enter__(self) -> HDF5StorageReader[Config]:
        self._file = RunFileReader(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def file(self) -> RunFileReader:
        """The open run file."""
        if self._file is None:
            raise NotOpenError("the reader is not open; use it as a context manager")
        return self._file

    def list_groups(self) -> list[str]:
        """Group names, in config order (e.g. ``["group['box']", ...]``)."""
        return self.file.spec.group_names

    @property
    def metadata(self) -> dict[str, Any]:
        """User metadata given to the writer."""
        return self.file.spec.metadata

    @property
    def actual_steps(self) -> int:
        """Steps logged, as of the writer's last flush."""
        return self.file.actual_steps

    @property
    def generation(self) -> int:
        """The run's version (as ``RunInfo.generation`` on the store); ``0``: unknown."""
        return self.file.generation()

    def focus_group(
        self, view_or_name: str | Callable[[Any], Any], *, like: Any = None
    ) -> GroupReader[Any]:
        """A reader for one group, by name or by a view on the config.

        Args:
            view_or_name: A group name (``"group['traj']"``) or a function that
                picks the group from the config (``lambda c: c["traj"]``).
            like: Optional pytree with the stored structure to rebuild values
                with (see :mod:`trajstore.pytree`).

        Raises:
            KeyError: (:class:`~trajstore.errors.GroupNotFoundError`) if the
                group does not exist.
        """
        file = self.file
        position = group_position(file.spec, view_or_name, self.path.name)
        return GroupReader(FileLeaves(file, position), like=like)

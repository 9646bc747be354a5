"""Opening a run for writing: take its lock, recover it if a killed writer left it open.

The one place that knows both :class:`RunFileWriter` and recovery (which
itself writes through a :class:`RunFileWriter`), so neither imports the other.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor
from pathlib import Path

from trajstore.schema import RunSpec
from trajstore.store.ownership import RunLock
from trajstore.store.recovery import recover
from trajstore.store.writer import OpenMode, RunFileWriter, RunLeftOpenError

__all__ = ["open_run_writer"]


def open_run_writer(
    path: str | os.PathLike[str],
    spec: RunSpec,
    *,
    mode: OpenMode = "create",
    chunk_pool: Executor | None = None,
) -> RunFileWriter:
    """A :class:`RunFileWriter` for ``path``, holding the run's lock until it closes.

    The lock is taken first; a file a killed writer left open (its lock is
    free, so that writer is gone) is recovered under it, then opened.

    Raises:
        RunLockedError: Another writer, anywhere, holds the run.
    """
    lock = RunLock.acquire(path)
    try:
        try:
            return RunFileWriter(path, spec, mode=mode, chunk_pool=chunk_pool, lock=lock.share())
        except RunLeftOpenError:
            recover(Path(path), lock)
        return RunFileWriter(path, spec, mode=mode, chunk_pool=chunk_pool, lock=lock.share())
    finally:
        lock.release()  # the writer holds its own share until it closes

"""Downloading a run from the store into a local HDF5 file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from trajstore.client.reader import RemoteLeaves
from trajstore.errors import RunExistsError
from trajstore.store.copying import copy_frames
from trajstore.store.ownership import RunLock
from trajstore.store.writer import RunFileWriter

if TYPE_CHECKING:
    from trajstore.client.reader import RemoteStorageReader

__all__ = ["pull_run"]


def pull_run(
    reader: RemoteStorageReader,
    path: Path,
    *,
    progress: bool,
    chunk_bytes: int,
    overwrite: bool = False,
) -> Path:
    """Copy every durable frame of ``reader``'s run into ``path`` (same layout as the store's).

    The file is written next to ``path`` and renamed into place when
    complete, so ``path`` never holds half a run; all of it under ``path``'s
    lock, so a pull never replaces a run another writer is writing. It
    holds one version of the run: every read is pinned to the generation
    the run had when the pull began.

    Raises:
        RunChangedError: The run was overwritten, or a writer rewrote frames
            of it (a restart from a checkpoint), while it was pulled: nothing
            is written (pull again).
        RunLockedError: Another writer holds ``path``.
        RunExistsError: ``path`` exists and ``overwrite`` is false.
        StorageError: ``path``'s directory does not exist.
    """
    spec = reader.spec
    info = reader.version()
    partial = path.with_name(path.name + ".part")
    total = sum(info.frames[g.name] * g.frame_nbytes for g in spec.groups)
    with RunLock.acquire(path) as lock:
        if path.exists() and not overwrite:
            raise RunExistsError(f"{path} exists; pull with overwrite=True (--force) to replace it")
        file = RunFileWriter(partial, spec, mode="overwrite", lock=lock.share())
        try:
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=reader.run, disable=not progress
            ) as bar:
                sources = [
                    RemoteLeaves(reader, position, info.generation)
                    for position in range(len(spec.groups))
                ]
                copy_frames(
                    file,
                    [info.frames[g.name] for g in spec.groups],
                    lambda group, leaves, index: sources[group].read(leaves, index),
                    block_bytes=chunk_bytes,
                    on_block=bar.update,
                )
            file.set_actual_steps(info.actual_steps)
            file.close()
        except BaseException:
            with contextlib.suppress(Exception):
                file.close()
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, path)
    return path

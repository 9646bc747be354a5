"""Downloading a run from the store into a local HDF5 file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from trajstore.store.writer import RunFileWriter

if TYPE_CHECKING:
    from trajstore.client.reader import RemoteStorageReader

__all__ = ["pull_run"]


def pull_run(reader: RemoteStorageReader, path: Path, *, progress: bool, chunk_bytes: int) -> Path:
    """Copy every durable frame of ``reader``'s run into ``path`` (same layout as the store's).

    The file is written next to ``path`` and renamed into place when
    complete, so ``path`` never holds half a run.
    """
    spec = reader.spec
    info = reader.describe()
    partial = path.with_name(path.name + ".part")
    total = sum(info.frames[g.name] * g.frame_nbytes for g in spec.groups)
    file = RunFileWriter(partial, spec, mode="overwrite")
    try:
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=reader.run, disable=not progress
        ) as bar:
            for position, group in enumerate(spec.groups):
                source = reader.focus_group(group.name)._remote
                frames = info.frames[group.name]
                leaves = list(range(len(group.leaves)))
                if not group.time_axis:
                    if frames:
                        values = source.read(leaves, ...)
                        file.write_block(position, 0, 1, [np.asarray(v)[None] for v in values])
                        bar.update(group.frame_nbytes)
                    continue
                per_request = max(1, chunk_bytes // max(group.frame_nbytes, 1))
                for start in range(0, frames, per_request):
                    stop = min(start + per_request, frames)
                    file.write_block(
                        position, start, stop - start, source.read(leaves, slice(start, stop))
                    )
                    bar.update((stop - start) * group.frame_nbytes)
        file.set_actual_steps(info.actual_steps)
        file.close()
    except BaseException:
        with contextlib.suppress(Exception):
            file.close()
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    return path

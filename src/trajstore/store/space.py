"""Refusing writes that would not fit, before HDF5 runs out of room.

HDF5 (2.0, as of this writing) does not survive running out of space well:
after a write fails with ENOSPC or EFBIG, closing the file fails and freeing
its handles can crash the process. So the writer checks first: a block that
would leave less than a reserve of room on the file system, or take the file
past the process's file-size limit, is refused with a clear
:class:`~trajstore.errors.StorageError`, and the file stays intact and
closable, holding every frame written before.
"""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

from trajstore.errors import StorageError

__all__ = ["FREE_SPACE_RESERVE", "check_room"]

#: Room always left free on the file system (HDF5 metadata, other runs).
FREE_SPACE_RESERVE = 64 << 20
#: Room left below a process file-size limit (HDF5 metadata of this file).
FILE_LIMIT_RESERVE = 512 << 10


def check_room(path: Path, nbytes: int) -> None:
    """Raise :class:`StorageError` unless ``nbytes`` more (with overhead) fit at ``path``."""
    needed = 2 * nbytes  # a partly filled chunk may be rewritten once, compressed
    free = shutil.disk_usage(path.parent).free
    if free - needed < FREE_SPACE_RESERVE:
        raise StorageError(
            f"no space left for {path.name}: {free >> 20} MiB free, a block needs "
            f"{needed >> 20} MiB and {FREE_SPACE_RESERVE >> 20} MiB stay in reserve"
        )
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY:
        size = os.path.getsize(path) if path.exists() else 0
        if size + needed + FILE_LIMIT_RESERVE > limit:
            raise StorageError(
                f"{path.name} would outgrow this process's file size limit "
                f"({limit >> 20} MiB): refusing the block"
            )

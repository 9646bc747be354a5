"""Copying a run's frames into a :class:`RunFileWriter` (a rebuild, a pull)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from trajstore.store.writer import RunFileWriter

__all__ = ["copy_frames"]


def copy_frames(
    writer: RunFileWriter,
    frames: Sequence[int],
    read: Callable[[int, list[int], Any], Sequence[Any]],
    *,
    block_bytes: int,
    on_block: Callable[[int], None] | None = None,
) -> None:
    """Copy the first ``frames[g]`` frames of every group ``g`` into ``writer``.

    ``read(group, leaves, index)`` returns ``array[index]`` of each leaf of a
    run with ``writer``'s schema (a local file when rebuilding one, the store
    when pulling a run). Blocks hold about ``block_bytes``; ``on_block`` is
    told the bytes of each one written.
    """
    for position, group in enumerate(writer.spec.groups):
        leaves = list(range(len(group.leaves)))
        if not group.time_axis:
            if frames[position]:
                values = read(position, leaves, ...)
                writer.write_block(position, 0, 1, [np.asarray(v)[None] for v in values])
                if on_block is not None:
                    on_block(group.frame_nbytes)
            continue
        per_block = max(1, block_bytes // max(group.frame_nbytes, 1))
        for start in range(0, frames[position], per_block):
            stop = min(start + per_block, frames[position])
            values = read(position, leaves, slice(start, stop))
            writer.write_block(position, start, stop - start, [np.asarray(v) for v in values])
            if on_block is not None:
                on_block((stop - start) * group.frame_nbytes)

"""Recovering a run file whose writer was killed.

After a ``kill -9`` of a process writing a file in SWMR mode, HDF5 leaves the
file's status flags set: it still opens with ``h5py.File(path, "r",
swmr=True)``, but opening it to write fails with "file is already open for
write" until the flags are cleared. Instead of patching the superblock, the
run is rebuilt: every durable frame (as its group's ``frames`` attribute
counts them) is copied into a fresh file with the same layout, which then
replaces the old one atomically. Frames written but never made durable are
dropped; nothing acknowledged is lost.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py

from trajstore.store import layout
from trajstore.store.reader import RunFileReader
from trajstore.store.writer import RunFileWriter

__all__ = ["is_left_open", "recover"]

log = logging.getLogger("trajstore.store")

#: Bytes copied per block while rebuilding.
COPY_BLOCK_BYTES = 16 << 20


def is_left_open(error: OSError) -> bool:
    """Whether ``error`` is HDF5 refusing a file a killed writer left open."""
    text = str(error)
    return "already open for write" in text or "consistency flags" in text


def recover(path: Path) -> None:
    """Rebuild ``path`` from its durable frames (see the module docstring)."""
    rebuilt = path.with_name(path.name + ".recovering")
    reader = RunFileReader(path)
    try:
        writer = RunFileWriter(rebuilt, reader.spec, mode="overwrite")
        try:
            for position, group in enumerate(reader.spec.groups):
                frames = reader.frames(position)
                leaves = list(range(len(group.leaves)))
                if not group.time_axis:
                    if frames:
                        values = reader.read(position, leaves, ..., frames=frames)
                        writer.write_block(position, 0, 1, [v[None] for v in values])
                    continue
                per_block = max(1, COPY_BLOCK_BYTES // max(group.frame_nbytes, 1))
                for start in range(0, frames, per_block):
                    stop = min(start + per_block, frames)
                    values = reader.read(position, leaves, slice(start, stop), frames=frames)
                    writer.write_block(position, start, stop - start, values)
            writer.set_actual_steps(reader.actual_steps)
            created = reader.created
        finally:
            writer.close()
    finally:
        reader.close()
    if created is not None:
        with h5py.File(rebuilt, "r+") as f:
            f.attrs[layout.ATTR_CREATED] = created
    os.replace(rebuilt, path)
    log.warning("recovered a run file left open by a killed writer", extra={"path": str(path)})

"""Recovering a run file whose writer was killed.

After a ``kill -9`` of a process writing a file in SWMR mode, HDF5 leaves the
file's status flags set: it still opens with ``h5py.File(path, "r",
swmr=True)``, but opening it to write fails with "file is already open for
write" until the flags are cleared (what ``h5clear -s`` does).

:func:`clear_status_flags` clears them in place: it checks that the file
starts with a version 2 or 3 superblock whose checksum (Jenkins' lookup3, as
HDF5 computes it) verifies, zeroes the flags byte, and writes the checksum
anew. A SWMR writer keeps its file consistent as of its last flush, and the
``frames`` attributes count only flushed frames, so the run resumes exactly
from what was durable. When the superblock is not one it can verify,
:func:`rebuild` copies every durable frame into a fresh file with the same
layout, which replaces the old one atomically. Either way frames written but
never made durable are dropped; nothing acknowledged is lost.

All of it happens under the run's lock (:mod:`~trajstore.store.ownership`):
a file whose lock a live writer holds is being written, not left open, and
is never touched here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import h5py

from trajstore.durable import sync_directory, sync_file
from trajstore.store import layout
from trajstore.store.copying import copy_frames
from trajstore.store.opening import is_left_open
from trajstore.store.ownership import RunLock, lock_path
from trajstore.store.reader import RunFileReader
from trajstore.store.writer import RunFileWriter

__all__ = ["clear_status_flags", "is_left_open", "lookup3", "rebuild", "recover"]

log = logging.getLogger("trajstore.store")

#: Bytes copied per block while rebuilding.
COPY_BLOCK_BYTES = 16 << 20


_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: HDF5's metadata checksum."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    i = 0
    while length > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & _MASK
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & _MASK
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & _MASK
        a = (a - c) & _MASK ^ _rot(c, 4)
        c = (c + b) & _MASK
        b = (b - a) & _MASK ^ _rot(a, 6)
        a = (a + c) & _MASK
        c = (c - b) & _MASK ^ _rot(b, 8)
        b = (b + a) & _MASK
        a = (a - c) & _MASK ^ _rot(c, 16)
        c = (c + b) & _MASK
        b = (b - a) & _MASK ^ _rot(a, 19)
        a = (a + c) & _MASK
        c = (c - b) & _MASK ^ _rot(b, 4)
        b = (b + a) & _MASK
        length -= 12
        i += 12
    if length == 0:
        return c
    tail = data[i:] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    c = (c ^ b) - _rot(b, 14) & _MASK
    a = (a ^ c) - _rot(c, 11) & _MASK
    b = (b ^ a) - _rot(a, 25) & _MASK
    c = (c ^ b) - _rot(b, 16) & _MASK
    a = (a ^ c) - _rot(c, 4) & _MASK
    b = (b ^ a) - _rot(a, 14) & _MASK
    c = (c ^ b) - _rot(b, 24) & _MASK
    return c


def clear_status_flags(path: Path) -> bool:
    """Clear the superblock's status flags in place; ``False`` if it cannot be verified.

    Call it holding the run's lock (as :func:`recover` does).
    """
    with open(path, "r+b") as f:
        head = f.read(12)
        if len(head) < 12 or head[:8] != _SIGNATURE or head[8] not in (2, 3):
            return False
        size = 12 + 4 * head[9]  # flags byte, then four addresses, then the checksum
        f.seek(0)
        block = f.read(size + 4)
        if len(block) != size + 4:
            return False
        if lookup3(block[:size]) != int.from_bytes(block[size:], "little"):
            return False
        patched = block[:11] + b"\x00" + block[12:size]
        f.seek(0)
        f.write(patched + lookup3(patched).to_bytes(4, "little"))
        f.flush()
        os.fsync(f.fileno())
    log.warning("cleared the status flags a killed writer left", extra={"path": str(path)})
    return True


@contextlib.contextmanager
def _under_lock(path: Path, lock: RunLock | None) -> Iterator[RunLock]:
    """``lock`` if it is the held lock of ``path``; else ``path``'s lock, taken for the block."""
    if lock is None:
        with RunLock.acquire(path) as taken:
            yield taken
        return
    if not lock.held or lock.path != lock_path(path):
        raise ValueError(f"{lock.path} is not the held lock of {path}")
    yield lock


def recover(path: Path, lock: RunLock | None = None) -> None:
    """Make ``path`` writable again: clear its status flags, or else rebuild it.

    ``lock``: the run's lock, held by the caller; without it the lock is
    taken here (:class:`~trajstore.errors.RunLockedError` if a writer holds it).
    """
    with _under_lock(path, lock) as held:
        if not clear_status_flags(path):
            rebuild(path, held)


def rebuild(path: Path, lock: RunLock | None = None) -> None:
    """Rebuild ``path`` from its durable frames (see the module docstring).

    ``lock``: as for :func:`recover`.
    """
    with _under_lock(path, lock) as held:
        _rebuild(path, held)


def _rebuild(path: Path, lock: RunLock) -> None:
    rebuilt = path.with_name(path.name + ".recovering")  # covered by the run's lock
    reader = RunFileReader(path)
    try:
        writer = RunFileWriter(rebuilt, reader.spec, mode="overwrite", lock=lock.share())
        try:
            frames = [reader.frames(g) for g in range(len(reader.spec.groups))]
            copy_frames(
                writer,
                frames,
                lambda group, leaves, index: reader.read(
                    group, leaves, index, frames=frames[group]
                ),
                block_bytes=COPY_BLOCK_BYTES,
            )
            writer.set_actual_steps(reader.actual_steps)
            created = reader.created
        finally:
            writer.close()
    finally:
        reader.close()
    if created is not None:
        with h5py.File(rebuilt, "r+", locking=False) as f:
            f.attrs[layout.ATTR_CREATED] = created
        sync_file(rebuilt)
    os.replace(rebuilt, path)  # the original goes only once its rebuild is on disk
    sync_directory(path.parent)
    log.warning("recovered a run file left open by a killed writer", extra={"path": str(path)})

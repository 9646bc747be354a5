"""Opening run files for reading without ever stalling the process.

A SWMR reader retries every metadata read whose checksum fails, sleeping
twice as long each time (HDF5 assumes it raced the writer's flush): with
HDF5's default of 100 attempts, opening one *damaged* file stalls for hours,
and since h5py serialises every HDF5 call behind one lock, the whole process
stalls with it. So:

- a file nobody writes (its superblock's status flags are clear) is opened
  without SWMR: no retries, a damaged one fails at once;
- a file a writer holds (or a killed writer left; or that looks truncated
  while its writer, in another process, extends it) needs SWMR, and is opened
  with a bounded number of read attempts (:data:`SWMR_READ_ATTEMPTS`, about
  0.1 s of retries in all), set through ``H5Pset_metadata_read_attempts``,
  which h5py does not wrap: the function is called on the HDF5 library h5py
  itself loaded.

A file that cannot be opened for any reason but its absence or its
permissions is reported as :class:`~trajstore.errors.RunDamagedError`.

Run files are opened without HDF5's file lock (``locking=False``), by
readers and writers alike (HDF5 refuses to open one file twice in a process
with different settings): HDF5's lock would keep a writer in another process
from opening a run any reader holds open (another store's cached handle).
Writers are kept apart by the run's own lock (``store/ownership.py``), and
a reader learns that a file changed under its handle by the file's size and
times.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path
from typing import Any

import h5py

from trajstore.errors import RunDamagedError, RunNotFoundError, StorageError
from trajstore.store.ownership import is_locked

__all__ = ["SWMR_READ_ATTEMPTS", "is_left_open", "open_for_reading"]

log = logging.getLogger("trajstore.store")

#: Metadata read attempts of a SWMR reader. The sleeps between them double:
#: measured with HDF5 2.0, 25 attempts fail in 0.05 s, 30 in 1.1 s, 40 in
#: about 20 minutes; a writer's metadata flush takes far less than 0.1 s.
SWMR_READ_ATTEMPTS = 26


def is_left_open(error: OSError) -> bool:
    """Whether ``error`` is HDF5 refusing a file a writer holds (or a killed one left)."""
    text = str(error)
    return "already open for write" in text or "consistency flags" in text


@functools.cache
def _set_read_attempts() -> Any:
    """``H5Pset_metadata_read_attempts`` of the HDF5 library h5py uses, or ``None``."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libhdf5" in line}
    except OSError:  # not Linux: the library cannot be found this way
        paths = set()
    for path in sorted(paths):
        if "_hl" in Path(path).name:
            continue
        try:
            function = ctypes.CDLL(path).H5Pset_metadata_read_attempts
        except (OSError, AttributeError):
            continue
        function.argtypes = [ctypes.c_int64, ctypes.c_uint]
        function.restype = ctypes.c_int
        return function
    log.warning(
        "cannot bound SWMR metadata read attempts (HDF5 library not found): "
        "a damaged file being written may stall reads"
    )
    return None


def _open_swmr(path: Path) -> h5py.File:
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_file_locking(False, True)
    set_attempts = _set_read_attempts()
    if set_attempts is not None and set_attempts(fapl.id, SWMR_READ_ATTEMPTS) < 0:
        raise StorageError("HDF5 refused to bound its metadata read attempts")
    flags = h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ
    return h5py.File(h5py.h5f.open(bytes(path), flags, fapl=fapl))


def open_for_reading(path: Path) -> h5py.File:
    """``path`` open read-only, with SWMR only if a writer holds it.

    Raises:
        RunNotFoundError: No file at ``path``.
        RunDamagedError: The file is not a readable HDF5 file.
        StorageError: It cannot be read for another reason (permissions).
    """
    try:
        return h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise RunNotFoundError(f"no run file at {path}") from None
    except PermissionError as e:
        raise StorageError(f"cannot open {path}: {e}") from e
    except OSError as e:
        # A file a writer in another process holds may be longer in its superblock
        # than on disk for a moment (the writer is extending it): HDF5 checks that
        # before the status flags, and lets SWMR readers of a file being written pass.
        extending = "truncated file" in str(e) and is_locked(path)
        if not (is_left_open(e) or extending):
            raise RunDamagedError(f"{path} is damaged: {e}") from e
    try:
        return _open_swmr(path)
    except FileNotFoundError:
        raise RunNotFoundError(f"no run file at {path}") from None
    except OSError as e:
        raise RunDamagedError(f"{path} is damaged: {e}") from e

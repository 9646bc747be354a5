"""Who may write a run: an exclusive OS lock on a lock file beside it.

A run is written by at most one writer at a time, anywhere: every writer (a
store session, the local ``HDF5StorageWriter``, a pull, a recovery) holds
:class:`RunLock` on ``<run>.h5.lock`` for as long as it writes. The lock is
taken before anything touches the run (its ``.creating`` staging and its
``.recovering`` rebuild included) and released only once the writer has
closed. When the holding process dies, the kernel -- or the shared
filesystem's lock manager -- releases it: failover needs no clock, and a
file whose lock is held is never taken for one a killed writer left.

The primitive: Linux open-file-description locks (``F_OFD_SETLK``) on the
whole lock file, elsewhere ``flock``. Why:

* Both belong to the open file, not to the process, so two writers in one
  process conflict as two processes do. Classic ``fcntl``/``lockf`` locks
  belong to the process: a second writer in it would get the lock too, and
  closing *any* descriptor of the file (HDF5 opens and closes its own)
  would drop it.
* ``F_OFD_SETLK`` is a POSIX byte-range lock to the filesystem, the kind
  NFSv4 (and NFSv3 with a working ``lockd``), Lustre mounted with
  ``-o flock``, GPFS and CephFS enforce across hosts. ``flock`` is local on
  some of them (Lustre with ``localflock``) and emulated by byte-range locks
  on NFS, so it offers nothing more.
* The lock is never deleted while it may be in use (deleting lock files
  races: a waiter could lock an unlinked file while a newcomer locks a new
  one); lock files stay beside their runs.

The lock file also says who holds it (host, pid, since when), written once
the lock is taken, so that a refused writer's :class:`RunLockedError` names
its holder. Only the lock decides; the text is for people.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from trajstore.errors import RunLockedError, StorageError

__all__ = ["LOCK_SUFFIX", "RunLock", "is_locked", "lock_path"]

#: Appended to a run file's name to name its lock file.
LOCK_SUFFIX = ".lock"

_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)
_OFD_GETLK: int | None = getattr(fcntl, "F_OFD_GETLK", None)
_REFUSED = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
_UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of the run at ``path`` (through symlinks: one lock per file)."""
    target = Path(os.path.realpath(path))
    return target.with_name(target.name + LOCK_SUFFIX)


def _lock_exclusive(fd: int) -> None:
    """Lock the whole file ``fd`` for this open file description, without waiting."""
    if _OFD_SETLK is not None:
        # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks).
        request = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        fcntl.fcntl(fd, _OFD_SETLK, request + bytes(32))
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def is_locked(run_path: str | os.PathLike[str]) -> bool:
    """Whether a writer -- in any process, on any host sharing the lock -- holds ``run_path``.

    Asks without taking anything (``F_OFD_GETLK``), so a writer acquiring
    the lock meanwhile is never refused because of the question. Where
    there are no OFD locks it briefly takes a shared ``flock`` instead.
    """
    path = lock_path(run_path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False  # no lock file: never written under a lock
    try:
        if _OFD_GETLK is not None:
            request = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0) + bytes(32)
            answer = fcntl.fcntl(fd, _OFD_GETLK, request)
            (kind,) = struct.unpack("h", answer[:2])
            return bool(kind != fcntl.F_UNLCK)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            return e.errno in _REFUSED
        return False  # the shared lock goes with the descriptor, closed below
    except OSError:
        return False
    finally:
        os.close(fd)


class RunLock:
    """The exclusive lock of one run, held until :meth:`release`.

    Take it with :meth:`acquire`. A holder may lend it to code that writes
    under it (a rebuild, a staging file) with :meth:`share`; the OS lock is
    released when every share has been released.
    """

    def __init__(self, path: Path, fd: int) -> None:
        #: The lock file.
        self.path = path
        self._file = open(fd, "r+b", buffering=0)  # noqa: SIM115 (closed by release)
        self._shares = 1
        self._guard = threading.Lock()

    @classmethod
    def acquire(cls, run_path: str | os.PathLike[str]) -> RunLock:
        """Take the lock of the run at ``run_path``, or raise.

        Raises:
            RunLockedError: Another writer (in this process or another, on
                this host or another) holds it; the message names it.
            StorageError: The lock file cannot be made, or the filesystem
                gives no locks.
        """
        path = lock_path(run_path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileNotFoundError:
            raise StorageError(f"no directory {path.parent} for the run file") from None
        except OSError as e:
            raise StorageError(f"cannot open the lock file {path}: {e}") from e
        try:
            _lock_exclusive(fd)
        except OSError as e:
            os.close(fd)
            if e.errno in _REFUSED:
                holder = _holder(path)
                error = RunLockedError(
                    f"{Path(run_path)} is being written by {holder}; a run has one writer at a time"
                )
                error.holder = holder
                raise error from None
            if e.errno in _UNSUPPORTED:
                raise StorageError(
                    f"the filesystem of {path} gives no file locks ({e}); trajstore needs them "
                    f"to keep a run to one writer (NFSv4, Lustre with -o flock, GPFS, CephFS "
                    f"and local disks give them)"
                ) from e
            raise StorageError(f"cannot lock {path}: {e}") from e
        lock = cls(path, fd)
        lock._record_holder()
        return lock

    def _record_holder(self) -> None:
        """Write who holds the lock into the lock file (for others' error messages)."""
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.time(),
            "program": _program(),
        }
        with contextlib.suppress(OSError):  # only a message depends on it
            fd = self._file.fileno()
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)

    @property
    def held(self) -> bool:
        """Whether this lock is still held."""
        return not self._file.closed

    def share(self) -> RunLock:
        """Lend the held lock: one more :meth:`release` is needed to let it go."""
        with self._guard:
            if self._file.closed:
                raise RunLockedError(f"the lock {self.path} is no longer held")
            self._shares += 1
        return self

    def release(self) -> None:
        """Give back one share; the last one unlocks (closing the lock file)."""
        with self._guard:
            if self._file.closed:
                return
            self._shares -= 1
            if self._shares > 0:
                return
            with contextlib.suppress(OSError):
                os.ftruncate(self._file.fileno(), 0)  # names no holder once free
            self._file.close()  # closing the description releases its lock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _program() -> str:
    """This process's program, briefly (``trajstore serve``, ``lj_md.py``, ``python -c``)."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if len(argv) >= 3 and argv[1] == "-m":
        command = argv[3:4] if len(argv) > 3 and not argv[3].startswith("-") else []
        return " ".join([argv[2], *command])
    if len(argv) >= 2 and argv[1] == "-c":
        return "python -c"
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"


def _holder(path: Path) -> str:
    """Who holds the lock at ``path``, as its lock file says, in words."""
    try:
        info: Any = json.loads(path.read_bytes() or b"null")
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict):
        return "another writer (its lock file does not say which)"
    try:
        host, pid, since = str(info["host"]), int(info["pid"]), float(info["since"])
    except (KeyError, TypeError, ValueError):
        return "another writer (its lock file does not say which)"
    program = str(info.get("program", ""))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
    what = f"{program}, " if program else ""
    if host == socket.gethostname():
        if pid == os.getpid():
            where = f"another writer in this process (pid {pid})"
        else:
            where = f"another process ({what}pid {pid}) on this host"
    else:
        where = f"a process ({what}pid {pid}) on host {host}"
    return f"{where}, since {when}"

"""Run files shared by readers and writers inside the server process.

HDF5 lets one process open a file for reading while it holds it for
writing, but not the other way round: creating, overwriting or appending to
a run needs every read handle on it closed first. :class:`RunFiles` keeps
one cached read handle per run and coordinates: reads share a run, opening
it for writing waits until they are done and drops the cached handle. A
writer waiting goes first: reads that start after it wait for it, so a
steady stream of reads cannot keep a run from being reopened; and it waits
a bounded time, so a reader that stalls cannot hold a writer forever.

Another process may write a run too (several stores on one data
directory). A cached handle shows the file as it was when opened (HDF5
keeps one view of a file per process), so a handle on a run nobody writes
*here* is checked against the file's size, times and inode at every read:
once the file changed, the reads on the old handle finish, and the next
one opens the file again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trajstore.errors import RunLockedError, RunNotFoundError
from trajstore.server.names import run_path
from trajstore.store.reader import RunFileReader

__all__ = ["RunFiles", "file_version"]


@dataclass
class _Entry:
    readers: int = 0
    writing: bool = False
    writers_waiting: int = 0
    handle: RunFileReader | None = None
    version: tuple[int, ...] = ()  # the file's stat when the handle was opened
    stale: bool = False  # the file changed since: replace the handle once its reads end
    evicted: bool = False  # dropped from RunFiles: whoever holds it looks the run up again
    changed: threading.Condition = field(default_factory=threading.Condition)


def _readable(entry: _Entry) -> bool:
    return not entry.writing and not entry.writers_waiting and not (entry.stale and entry.readers)


def file_version(path: Path) -> tuple[int, ...]:
    """What changes whenever a file is written or replaced: inode, size, times (``()``: gone)."""
    try:
        stat = os.stat(path)
    except OSError:
        return ()
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _writable(entry: _Entry) -> bool:
    return not entry.writing and entry.readers == 0


class RunFiles:
    """Read handles on run files, and who may open them for writing when.

    Args:
        data_dir: The data directory.
        max_cached: Runs remembered between requests, each with its read
            handle kept open; beyond them the least recently used idle ones
            are forgotten (so asking for many runs, existing or not, costs
            bounded memory and no per-read scan).
        written_here: Whether a writer in this process holds a run: its
            handles see the writer's frames as they come, and need no check
            against the file (set by the server's run registry).
    """

    def __init__(
        self,
        data_dir: Path,
        max_cached: int = 64,
        written_here: Callable[[str], bool] = lambda run: False,
    ) -> None:
        self.data_dir = data_dir
        self.max_cached = max_cached
        self.written_here = written_here
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def _entry(self, run: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(run)
            if entry is None:
                entry = self._entries[run] = _Entry()
            self._entries.move_to_end(run)
            return entry

    def __len__(self) -> int:
        """Runs remembered now."""
        return len(self._entries)

    @contextlib.contextmanager
    def reading(self, run: str) -> Iterator[RunFileReader]:
        """A read handle on ``run`` for the duration of the block."""
        known = self._entries.get(run)
        if known is None or known.handle is None:
            run_path(self.data_dir, run)  # validate the name before it becomes a key
        while True:
            entry = self._entry(run)  # also marks the run recently used
            with entry.changed:
                entry.changed.wait_for(functools.partial(_readable, entry))
                if entry.evicted:
                    continue
                if entry.handle is not None and not entry.stale and not self.written_here(run):
                    entry.stale = file_version(entry.handle.path) != entry.version
                if entry.stale:
                    if entry.readers:
                        continue  # wait until the reads on the old handle end
                    if entry.handle is not None:
                        entry.handle.close()
                        entry.handle = None
                    entry.stale = False
                if entry.handle is None:
                    path = run_path(self.data_dir, run)
                    version = file_version(path)
                    if version:
                        entry.handle = RunFileReader(path)
                        entry.version = version
                if entry.handle is not None:
                    entry.readers += 1
                handle = entry.handle
                break
        if handle is None:
            self._evict_idle()  # the entry just made for it counts against the bound
            raise RunNotFoundError(f"no run {run!r}")
        try:
            yield handle
        finally:
            with entry.changed:
                entry.readers -= 1
                entry.changed.notify_all()
            self._evict_idle()

    @contextlib.contextmanager
    def writing(self, run: str, timeout: float | None = None) -> Iterator[None]:
        """Exclusive access to ``run`` while it is opened for writing.

        Raises:
            RunLockedError: Reads of ``run`` still went on after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            entry = self._entry(run)
            with entry.changed:
                entry.writers_waiting += 1
                try:
                    left = None if deadline is None else max(deadline - time.monotonic(), 0)
                    ready = entry.changed.wait_for(functools.partial(_writable, entry), left)
                finally:
                    entry.writers_waiting -= 1
                    entry.changed.notify_all()  # reads held back by this writer may go on
                if entry.evicted:
                    continue
                if not ready:
                    raise RunLockedError(
                        f"run {run!r} is being read; it could not be opened for writing "
                        f"within {timeout:.0f} s"
                    )
                entry.writing = True
                if entry.handle is not None:
                    entry.handle.close()
                    entry.handle = None
                break
        try:
            yield
        finally:
            with entry.changed:
                entry.writing = False
                entry.changed.notify_all()
            self._evict_idle()

    def _evict_idle(self) -> None:
        """Forget the least recently used idle runs beyond ``max_cached``, closing their handles."""
        if len(self._entries) <= self.max_cached:
            return
        with self._lock:
            excess = len(self._entries) - self.max_cached
            for run, entry in list(self._entries.items()):  # least recently used first
                if excess <= 0:
                    break
                with entry.changed:
                    if entry.readers == 0 and not entry.writing and not entry.writers_waiting:
                        if entry.handle is not None:
                            entry.handle.close()
                            entry.handle = None
                        entry.evicted = True
                        entry.changed.notify_all()
                        del self._entries[run]
                        excess -= 1

    def close_all(self) -> None:
        """Close every cached handle (server shutdown)."""
        with self._lock:
            for entry in self._entries.values():
                with entry.changed:
                    if entry.handle is not None and entry.readers == 0:
                        entry.handle.close()
                        entry.handle = None

"""Run files shared by readers and writers inside the server process.

HDF5 lets one process open a file for reading while it holds it for
writing, but not the other way round: creating, overwriting or appending to
a run needs every read handle on it closed first. :class:`RunFiles` keeps
one cached read handle per run and coordinates: reads share a run, opening
it for writing waits until they are done and drops the cached handle.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trajstore.errors import RunNotFoundError
from trajstore.server.names import run_path
from trajstore.store.reader import RunFileReader

__all__ = ["RunFiles"]


@dataclass
class _Entry:
    readers: int = 0
    writing: bool = False
    handle: RunFileReader | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)


class RunFiles:
    """Read handles on run files, and who may open them for writing when.

    Args:
        data_dir: The data directory.
        max_cached: Read handles kept open between requests.
    """

    def __init__(self, data_dir: Path, max_cached: int = 64) -> None:
        self.data_dir = data_dir
        self.max_cached = max_cached
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def _entry(self, run: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(run)
            if entry is None:
                entry = self._entries[run] = _Entry()
            self._entries.move_to_end(run)
            return entry

    @contextlib.contextmanager
    def reading(self, run: str) -> Iterator[RunFileReader]:
        """A read handle on ``run`` for the duration of the block."""
        entry = self._entries.get(run)
        if entry is None or entry.handle is None:
            run_path(self.data_dir, run)  # validate the name before it becomes a key
            entry = self._entry(run)
        with entry.changed:
            entry.changed.wait_for(lambda: not entry.writing)
            if entry.handle is None:
                path = run_path(self.data_dir, run)
                if not path.exists():
                    raise RunNotFoundError(f"no run {run!r}")
                entry.handle = RunFileReader(path)
            entry.readers += 1
            handle = entry.handle
        try:
            yield handle
        finally:
            with entry.changed:
                entry.readers -= 1
                entry.changed.notify_all()
            self._evict_idle()

    @contextlib.contextmanager
    def writing(self, run: str) -> Iterator[None]:
        """Exclusive access to ``run`` while it is opened for writing."""
        entry = self._entry(run)
        with entry.changed:
            entry.changed.wait_for(lambda: not entry.writing and entry.readers == 0)
            entry.writing = True
            if entry.handle is not None:
                entry.handle.close()
                entry.handle = None
        try:
            yield
        finally:
            with entry.changed:
                entry.writing = False
                entry.changed.notify_all()

    def _evict_idle(self) -> None:
        """Close the least recently used idle handles beyond ``max_cached``."""
        with self._lock:
            cached = [(run, e) for run, e in self._entries.items() if e.handle is not None]
            excess = len(cached) - self.max_cached
            for run, entry in cached:
                if excess <= 0:
                    break
                with entry.changed:
                    if entry.readers == 0 and not entry.writing and entry.handle is not None:
                        entry.handle.close()
                        entry.handle = None
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

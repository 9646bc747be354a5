"""What listing needs to know of every run, without opening every file on every call.

:class:`RunCatalog` finds runs by walking the data directory and keeps a
summary of each (groups, frame counts, metadata, ...) keyed by the file's
size, modification time and inode: a summary is read from the file again
only after the file changed. A file that cannot be read (damaged, not a
trajstore run, a description that cannot be parsed) gets a summary too, one
that names its problem: listing reports it and goes on with the others, and
does not try the file again until it changes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trajstore import errors
from trajstore.server.files import RunFiles
from trajstore.server.names import run_path, validate_run_name

__all__ = ["RunCatalog", "RunSummary"]

log = logging.getLogger("trajstore.server")


@dataclass(frozen=True)
class RunSummary:
    """One run as its file says, at one version of the file.

    Attributes:
        groups: Group names.
        frames: Durable frames per group, as the file counts them.
        metadata_json: The user's metadata.
        created: Creation time (Unix seconds), if recorded.
        actual_steps: Steps the writer reported.
        generation: The run's version (see ``RunFileReader.generation``).
        size_bytes: Size of the file.
        updated: Last modification of the file (Unix seconds).
        problem: Why the run cannot be read ('' if it can): its file is
            damaged, or holds no description trajstore can read.
    """

    groups: tuple[str, ...] = ()
    frames: tuple[int, ...] = ()
    metadata_json: str = ""
    created: float | None = None
    actual_steps: int = 0
    generation: int = 0
    size_bytes: int = 0
    updated: float = 0.0
    problem: str = ""


def _version(stat: os.stat_result) -> tuple[int, ...]:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class RunCatalog:
    """Run names under a data directory, and a summary of each.

    Args:
        files: The run files' read handles (summaries are read through them).
        max_bytes: Bytes of metadata remembered across summaries; beyond it
            the least recently listed are forgotten (and read again when asked).
    """

    def __init__(self, files: RunFiles, max_bytes: int = 64 << 20) -> None:
        self.files = files
        self.data_dir = files.data_dir
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._summaries: OrderedDict[str, tuple[tuple[int, ...], RunSummary]] = OrderedDict()
        self._bytes = 0

    def names(self, prefix: str = "") -> list[str]:
        """Every run name starting with ``prefix``, sorted."""
        names = []
        root = self.data_dir.resolve()
        for dirpath, dirnames, filenames in os.walk(root):
            for filename in filenames:
                if not filename.endswith(".h5"):
                    continue
                name = (Path(dirpath) / filename).relative_to(root).as_posix()[: -len(".h5")]
                try:
                    validate_run_name(name)
                except errors.InvalidRunNameError:
                    continue  # not a file the store wrote
                if name.startswith(prefix):
                    names.append(name)
            dirnames.sort()
        names.sort()
        return names

    def summary(self, name: str) -> RunSummary:
        """``name``'s summary as of its file now; one naming a problem if it cannot be read.

        Raises:
            RunNotFoundError: The run is gone.
        """
        try:
            path = run_path(self.data_dir, name)
            stat = path.stat()
        except FileNotFoundError:
            raise errors.RunNotFoundError(f"no run {name!r}") from None
        except (OSError, errors.InvalidArgumentError) as e:
            return RunSummary(problem=str(e))
        version = _version(stat)
        with self._lock:
            known = self._summaries.get(name)
            if known is not None and known[0] == version:
                self._summaries.move_to_end(name)
                return known[1]
        summary = self._read(name, stat)
        with self._lock:
            old = self._summaries.pop(name, None)
            if old is not None:
                self._bytes -= len(old[1].metadata_json)
            self._summaries[name] = (version, summary)
            self._bytes += len(summary.metadata_json)
            while self._bytes > self.max_bytes and len(self._summaries) > 1:
                _, (_, dropped) = self._summaries.popitem(last=False)
                self._bytes -= len(dropped.metadata_json)
        return summary

    def _read(self, name: str, stat: os.stat_result) -> RunSummary:
        size, updated = stat.st_size, stat.st_mtime
        try:
            with self.files.reading(name) as reader:
                spec = reader.spec
                return RunSummary(
                    groups=tuple(spec.group_names),
                    frames=tuple(reader.frames(i) for i in range(len(spec.groups))),
                    metadata_json=spec.metadata_json,
                    created=reader.created,
                    actual_steps=reader.actual_steps,
                    generation=reader.generation(),
                    size_bytes=size,
                    updated=updated,
                )
        except errors.RunNotFoundError:
            raise
        except Exception as e:  # one bad run never fails a listing of the others
            log.warning("run %s cannot be read: %r", name, e)
            # Anything else HDF5 raised reading a file that opened: its insides are damaged.
            problem = str(e) if isinstance(e, errors.TrajstoreError) else f"damaged: {e}"
            return RunSummary(size_bytes=size, updated=updated, problem=problem)

    def iter_summaries(self, names: list[str]) -> Iterator[tuple[str, RunSummary]]:
        """``(name, summary)`` of each name still there."""
        for name in names:
            try:
                yield name, self.summary(name)
            except errors.RunNotFoundError:
                continue  # removed since it was listed

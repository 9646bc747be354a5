"""Making file system changes durable: a file's data, a directory's entries."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["sync_directory", "sync_file"]


def sync_file(path: Path) -> None:
    """``fsync`` the file at ``path`` (raises ``OSError``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_directory(path: Path) -> None:
    """Make the entries of directory ``path`` durable (a new or renamed file in it).

    Best effort: some file systems cannot ``fsync`` a directory.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

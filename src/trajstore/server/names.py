"""Run names, checked before any path is built (DESIGN.md section 4)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from trajstore.errors import InvalidRunNameError

__all__ = ["MAX_RUN_NAME", "run_path", "validate_run_name"]

MAX_RUN_NAME = 200
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def validate_run_name(name: object) -> str:
    """Return ``name`` if it is a safe run name, else raise :class:`InvalidRunNameError`.

    A run name is 1-200 characters of ``A-Z a-z 0-9 . _ -`` in segments joined
    by ``/``, with no empty, ``.`` or ``..`` segment.
    """
    if not isinstance(name, str) or not name:
        raise InvalidRunNameError("a run name must be a non-empty string")
    if len(name) > MAX_RUN_NAME:
        raise InvalidRunNameError(f"run names have at most {MAX_RUN_NAME} characters")
    for segment in name.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise InvalidRunNameError(
                f"invalid run name {name!r}: use segments of A-Z a-z 0-9 . _ - joined by '/', "
                f"none empty, '.' or '..'"
            )
    return name


def run_path(data_dir: Path, name: str) -> Path:
    """The file of run ``name`` under ``data_dir`` (the name is validated first)."""
    validate_run_name(name)
    root = data_dir.resolve()
    path = root / f"{name}.h5"
    # Defence in depth: a symlink inside the data dir must not lead outside it.
    real = Path(os.path.realpath(path))
    if root != real and root not in real.parents:
        raise InvalidRunNameError(f"run {name!r} resolves outside the data directory")
    return path

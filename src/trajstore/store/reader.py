"""Reading flat leaves of a run file by index."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the zstd filter, so compressed runs read)
import numpy as np

from trajstore.errors import (
    FrameIndexError,
    GroupNotFoundError,
    NotOpenError,
    RunNotFoundError,
    SchemaError,
    StorageError,
)
from trajstore.schema import GroupSpec, RunSpec
from trajstore.store import layout
from trajstore.store.indexing import plan_index

__all__ = ["RunFileReader"]


def _open(path: Path) -> h5py.File:
    try:
        # SWMR lets us read a run that is still being written.
        return h5py.File(path, "r", swmr=True)
    except OSError:
        pass
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise RunNotFoundError(f"no run file at {path}") from None
    except OSError as e:
        raise StorageError(f"cannot open {path}: {e}") from e


class RunFileReader:
    """One run file open for reading (also while another process writes it).

    Args:
        path: The run file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = _open(self.path)
        try:
            self.spec = self._read_spec()
        except BaseException:
            self._file.close()
            raise
        self._index = {g.name: i for i, g in enumerate(self.spec.groups)}

    def _read_spec(self) -> RunSpec:
        attrs = self._file.attrs
        if layout.ATTR_FORMAT not in attrs:
            raise SchemaError(f"{self.path} is not a trajstore run file")
        version = int(attrs[layout.ATTR_FORMAT])
        if version > layout.FORMAT_VERSION:
            raise SchemaError(
                f"{self.path} has format {version}; this trajstore reads up to "
                f"{layout.FORMAT_VERSION}"
            )
        try:
            names = json.loads(attrs[layout.ATTR_GROUP_NAMES])
            groups = tuple(
                GroupSpec.from_json(json.loads(self._file[n].attrs[layout.ATTR_GROUP_SPEC]))
                for n in names
            )
            total = int(attrs[layout.ATTR_TOTAL_STEPS])
            return RunSpec(
                groups=groups,
                config_structure=json.loads(attrs[layout.ATTR_CONFIG_STRUCTURE]),
                metadata_json=str(attrs[layout.ATTR_METADATA]),
                total_steps=None if total < 0 else total,
            )
        except (KeyError, ValueError, TypeError) as e:
            raise SchemaError(f"{self.path}: damaged trajstore metadata ({e})") from e

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    @property
    def actual_steps(self) -> int:
        """Steps the writer reported, as of its last flush."""
        return int(self._file.attrs[layout.ATTR_ACTUAL_STEPS])

    def group_index(self, name: str) -> int:
        """Position of group ``name``; :class:`GroupNotFoundError` if absent."""
        try:
            return self._index[name]
        except (KeyError, TypeError):
            raise GroupNotFoundError(
                f"no group {name!r} in {self.path.name}; groups: {self.spec.group_names}"
            ) from None

    def frames(self, group: int) -> int:
        """Frames of ``group`` that the writer has made durable."""
        return int(self._file[self.spec.groups[group].name].attrs[layout.ATTR_FRAMES])

    def read(
        self,
        group: int,
        leaves: Sequence[int],
        index: Any,
        *,
        frames: int | None = None,
    ) -> list[np.ndarray]:
        """Read ``array[index]`` of each chosen leaf of ``group``.

        Args:
            group: Group position.
            leaves: Positions of the leaves to read.
            index: numpy basic index; on a time-axis group its first axis is
                the frame axis, limited to the frames written.
            frames: Frames to expose (default: as recorded in the file). The
                server passes the count it has acknowledged.
        """
        if not self._file.id.valid:
            raise NotOpenError(f"{self.path.name} is closed; read inside the reader's `with` block")
        spec = self.spec.groups[group]
        if frames is None:
            frames = self.frames(group)
        if not spec.time_axis and frames == 0:
            raise FrameIndexError(f"{spec.name} was never written (it logs at step 0 only)")
        h5group = self._file[spec.name]
        out = []
        for i in leaves:
            leaf = spec.leaves[i]
            shape = ((frames,) if spec.time_axis else ()) + leaf.shape
            plan = plan_index(index, shape)
            ds = h5group[leaf.dataset_name]
            if spec.time_axis and ds.shape[0] < frames:
                ds.refresh()
            try:
                data = ds[plan.hyperslab]
            except OSError as e:
                raise StorageError(f"reading {spec.name}{leaf.path} failed: {e}") from e
            data = np.asarray(data)
            if plan.needs_fixup:
                data = data[plan.fixup]
            if data.dtype != leaf.np_dtype:
                data = data.view(leaf.np_dtype)
            out.append(data[()] if plan.scalar else data)
        return out

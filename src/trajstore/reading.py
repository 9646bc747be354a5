"""The reader half of the pytree front: array-like access to one group.

:class:`GroupReader` turns flat leaves from any :class:`LeafSource` (a local
file now, the store later) into the stored pytree, with numpy basic indexing
on the time axis.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import Any, Generic, Protocol, TypeVar

import jax
import numpy as np

from trajstore.errors import GroupNotFoundError, SchemaError
from trajstore.pytree import rebuild
from trajstore.schema import GroupSpec, RunSpec
from trajstore.store.layout import FORMAT_VERSION
from trajstore.store.naming import group_paths

__all__ = ["GroupReader", "LeafSource", "group_position", "repeat_leaves"]

Storage = TypeVar("Storage")


def group_position(spec: RunSpec, view_or_name: str | Callable[[Any], Any], run: str) -> int:
    """Position of the group named, or picked by a view on the config, in ``spec``.

    A name is kUPS's (``"group['energy']"``) or the group's plain path
    (``"energy"``, ``"a/b"``: its HDF5 path in format 2, whatever the file's
    format).

    Raises:
        GroupNotFoundError: No such group (a ``KeyError``).
    """
    name: Any = view_or_name
    if not isinstance(view_or_name, str):
        try:
            name = view_or_name(rebuild(spec.config_structure, spec.group_names))
        except (KeyError, AttributeError, IndexError, TypeError) as e:
            message = f"the view found no group in the config of {run}: {e!r}"
            raise GroupNotFoundError(message) from None
    if isinstance(name, str) and name in spec.group_names:
        return spec.group_names.index(name)
    short = group_paths(spec.group_names, FORMAT_VERSION)
    if isinstance(name, str) and name.strip("/") in short:
        return short.index(name.strip("/"))
    raise GroupNotFoundError(
        f"no group {name!r} in {run}; groups: {spec.group_names} (or by path: {short})"
    )


def repeat_leaves(
    positions: Sequence[int], unique: Sequence[int], arrays: Sequence[Any]
) -> list[Any]:
    """``arrays`` (one per ``unique`` position) in ``positions`` order; repeats get copies.

    A selection may name a field twice; the store refuses reads that name a
    leaf twice, so each leaf is read once and repeated here.
    """
    by_position = dict(zip(unique, arrays, strict=True))
    seen: set[int] = set()
    result = []
    for position in positions:
        array = by_position[position]
        result.append(array.copy() if position in seen else array)
        seen.add(position)
    return result


class LeafSource(Protocol):
    """Where a :class:`GroupReader` gets flat leaves from."""

    @property
    def spec(self) -> GroupSpec:
        """The group's schema."""
        ...

    def frames(self) -> int:
        """Frames readable now."""
        ...

    def read(self, leaves: Sequence[int], index: Any) -> list[np.ndarray]:
        """``array[index]`` of each chosen leaf (numpy basic indexing)."""
        ...


class GroupReader(Generic[Storage]):
    """A read-only, array-like view of one logging group.

    Items are the stored pytree. On a group with a time axis, the first axis
    of every index is the frame axis and ``len()`` is the number of frames
    written (never preallocated ones); further index components reach into
    the leaves. A group logged once has no time axis.

    Args:
        source: Where the leaves come from.
        like: Optional pytree with the stored structure, used to rebuild
            values (instead of the structure description in the file).
    """

    def __init__(self, source: LeafSource, *, like: Any = None) -> None:
        self._source = source
        self._like = like

    @property
    def spec(self) -> GroupSpec:
        """The group's schema."""
        return self._source.spec

    @property
    def name(self) -> str:
        """The group's name, e.g. ``"group['traj']"``."""
        return self.spec.name

    @property
    def source(self) -> LeafSource:
        """Where the leaves come from (a local file's group, or a store's)."""
        return self._source

    def to_xarray(self) -> Any:
        """This group as a lazily read :class:`xarray.Dataset` (needs the ``analysis`` extra).

        A variable per leaf, the ``step`` coordinate, the run's metadata in
        ``attrs``; see :mod:`trajstore.xarray_backend`. Reads go through this
        reader's run: keep it open while using the dataset.
        """
        from trajstore.xarray_backend import group_dataset

        return group_dataset(self)

    def __repr__(self) -> str:
        frames = f"{len(self)} frames" if self.spec.time_axis else "logged once"
        return f"<{type(self).__name__} {self.name}: {frames}>"

    def __len__(self) -> int:
        if not self.spec.time_axis:
            raise TypeError(f"{self.name} is logged once and has no time axis")
        return self._source.frames()

    def _rebuild(self, leaves: Sequence[Any]) -> Any:
        """The stored pytree from its leaves.

        A group stored without a structure description (written by a client
        other than trajstore's) reads as ``{leaf path: array}``, or as the bare
        array when its only leaf has the empty path.
        """
        if not self.spec.structure and self._like is None:
            paths = [leaf.path for leaf in self.spec.leaves]
            if paths == [""]:
                return leaves[0]
            return dict(zip(paths, leaves, strict=True))
        return rebuild(self.spec.structure, leaves, like=self._like)

    @cached_property
    def _names_tree(self) -> Any:
        """The stored structure with dataset names as leaves (for ``select``)."""
        return self._rebuild([leaf.dataset_name for leaf in self.spec.leaves])

    def _selected(self, select: Callable[[Any], Any] | None) -> tuple[list[int], Any]:
        if select is None:
            return list(range(len(self.spec.leaves))), None
        positions = {leaf.dataset_name: i for i, leaf in enumerate(self.spec.leaves)}
        chosen, treedef = jax.tree_util.tree_flatten(select(self._names_tree))
        try:
            return [positions[name] for name in chosen], treedef
        except (KeyError, TypeError):
            raise SchemaError(
                f"select must pick stored fields of {self.name}; it returned {chosen!r}"
            ) from None

    def _read_leaves(self, positions: list[int], index: Any) -> list[Any]:
        """Each leaf once from the source (a store refuses repeats); repeats get copies."""
        unique = list(dict.fromkeys(positions))
        if len(unique) == len(positions):
            return self._source.read(positions, index)
        return repeat_leaves(positions, unique, self._source.read(unique, index))

    def read(self, index: Any = ..., *, select: Callable[[Any], Any] | None = None) -> Any:
        """Read ``index`` of every leaf (or of the ``select``-ed ones) as a pytree.

        Args:
            index: numpy basic index: int, negative int, slice (any step),
                ``...`` or a tuple of these. ``None`` means everything.
            select: A view on the stored value picking the fields to read;
                only their datasets are touched.

        Raises:
            IndexError: (:class:`~trajstore.errors.FrameIndexError`) for an
                index out of range or not a basic index.
        """
        if index is None:
            index = ...
        positions, treedef = self._selected(select)
        arrays = self._read_leaves(positions, index)
        if treedef is not None:
            return jax.tree_util.tree_unflatten(treedef, arrays)
        return self._rebuild(arrays)

    def __getitem__(self, index: Any) -> Storage:
        return self.read(index)  # type: ignore[no-any-return]

    def read_chunked(
        self, chunk_size: int, *, select: Callable[[Any], Any] | None = None
    ) -> Iterator[Any]:
        """Yield the frames written so far in chunks of ``chunk_size`` frames.

        Raises:
            ValueError: If ``chunk_size`` is not a positive integer.
        """
        try:
            size = operator.index(chunk_size)
        except TypeError:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}") from None
        if size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {size}")
        return self._chunks(size, select)

    def _chunks(self, size: int, select: Callable[[Any], Any] | None) -> Iterator[Any]:
        total = len(self)
        for start in range(0, total, size):
            yield self.read(slice(start, min(start + size, total)), select=select)

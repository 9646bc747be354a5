"""Where a run's groups and leaves live in its file, by format version.

Format 1 names objects as kUPS does: a group is ``"group" + keystr(config
path)`` (``group['energy']``), a leaf's dataset ``"array" + keystr(leaf
path)`` (``array['total']``). Brackets are the subset syntax of HDF5's
tools, so ``h5dump`` cannot address those names.

Format 2 turns the same key paths into plain HDF5 path segments: a dict key
by its text, a field by its name, a list item by its number. Config
``{"traj": ...}`` is the group ``/traj``, a nested ``config["a"]["b"]`` is
``/a/b`` and a single :class:`~trajstore.WriterGroupConfig` is ``/data``;
leaf ``{"pos": ...}`` of ``traj`` is ``/traj/pos``, a nested leaf a dataset
in a subgroup. A leaf that is the whole value takes its group's last
segment (``/energy/energy``). Each group holds, besides, the netCDF-4
dimensions of its datasets: ``frame`` (the time axis) and
``<leaf>_dim<i>`` (leaf axes), HDF5 dimension scales that are not
variables, and ``step``, the step of each frame (see :mod:`.layout`).

Names come only from the spec, so every reader and writer derives the same
ones. A segment that is empty, ``.`` or ``..``, or holds a ``/`` or NUL,
is escaped; a name taken twice in one HDF5 group (two keys that read the same,
a leaf called ``step``) gets ``_2``, ``_3``, ... in order of the leaves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from trajstore.schema import GroupSpec, RunSpec

__all__ = [
    "FRAME_DIM",
    "SINGLE_GROUP",
    "STEP_VARIABLE",
    "GroupNames",
    "group_names",
    "group_paths",
    "key_segments",
    "leaf_names",
    "run_names",
]

#: The time axis's dimension in every group with one.
FRAME_DIM = "frame"
#: The coordinate variable that gives each frame's step.
STEP_VARIABLE = "step"
#: The group of a config that is a single ``WriterGroupConfig``.
SINGLE_GROUP = "data"
#: Prefix of kUPS's group names; what follows it is the config path's keystr.
GROUP_PREFIX = "group"

_TOKEN = re.compile(
    r"""\[(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|(-?\d+)|([^\]]*))\]|\.([^.\[]+)"""
)
# The escapes ``repr`` writes into a string literal.
_ESCAPES = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if len(code) > 1:  # \xNN, \uNNNN, \UNNNNNNNN
        return chr(int(code[1:], 16))
    return _SIMPLE_ESCAPES.get(code, "\\" + code)


def key_segments(keystr: str) -> list[str]:
    r"""The keys of a ``jax.tree_util.keystr`` path as plain strings.

    ``"['a'][0].pos"`` -> ``["a", "0", "pos"]``; a quoted key is read back
    as the string ``repr`` wrote (``'a\n'``: ``a`` and a newline). Text
    that is not a keystr is one segment as it stands.
    """
    segments: list[str] = []
    position = 0
    while position < len(keystr):
        match = _TOKEN.match(keystr, position)
        if match is None:
            return [keystr]
        single, double, number, other, field = match.groups()
        quoted = single if single is not None else double
        if quoted is not None:
            segments.append(_ESCAPES.sub(_unescape, quoted))
        else:
            segments.append(next(s for s in (number, other, field) if s is not None))
        position = match.end()
    return segments


def _plain(segment: str) -> str:
    """``segment`` as an HDF5 link name: never empty, ``.``, ``..``, nor holding ``/`` or NUL."""
    segment = segment.replace("%", "%25").replace("/", "%2F").replace("\x00", "%00")
    if segment in ("", ".", ".."):
        return "%" + segment.encode().hex() + "_"
    return segment


class _Namespace:
    """Plain names handed out in a tree of HDF5 groups: each name once per group.

    A key reached again on the way to another object (the subgroup ``a`` of
    leaves ``a/b`` and ``a/c``) gets the name it got the first time; any
    other object whose plain name is taken in its group (a reserved name,
    two keys that read the same, a leaf and a subgroup) gets ``_2``,
    ``_3``, ...
    """

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._taken: dict[str, set[str]] = {"": set(reserved)}
        self._subgroups: dict[tuple[str, str], str] = {}

    def name(self, parent: str, key: str) -> str:
        """A fresh name in ``parent`` for an object (a dataset, a dimension) of ``key``."""
        taken = self._taken.setdefault(parent, set())
        base = _plain(key)
        candidate, number = base, 2
        while candidate in taken:
            candidate, number = f"{base}_{number}", number + 1
        taken.add(candidate)
        return candidate

    def path(self, keys: Sequence[str]) -> tuple[str, str]:
        """The parent (made of subgroups, shared) and the fresh name of the object at ``keys``."""
        parent = ""
        for key in keys[:-1]:
            subgroup = self._subgroups.get((parent, key))
            if subgroup is None:
                subgroup = self._subgroups[(parent, key)] = self.name(parent, key)
            parent = f"{parent}/{subgroup}" if parent else subgroup
        return parent, self.name(parent, keys[-1])


def group_paths(names: Sequence[str], version: int) -> list[str]:
    """HDF5 paths (relative to the root) of the groups called ``names`` in a file of ``version``."""
    if version < 2:
        return list(names)
    space = _Namespace()
    paths = []
    for name in names:
        keys = name[len(GROUP_PREFIX) :] if name.startswith(GROUP_PREFIX) else name
        parent, last = space.path(key_segments(keys) or [SINGLE_GROUP])
        paths.append(f"{parent}/{last}" if parent else last)
    return paths


@dataclass(frozen=True)
class GroupNames:
    """The HDF5 names of one group's objects.

    Attributes:
        path: The group, relative to the file's root (``traj``, ``a/b``).
        datasets: Each leaf's dataset, relative to the group (``pos``,
            ``a/b``), in leaf order.
        dims: Each leaf's leaf-axis dimension names (format 2; empty for
            format 1), datasets next to the leaf's dataset.
        netcdf: Whether the group carries netCDF-4 dimensions and ``step``.
    """

    path: str
    datasets: tuple[str, ...]
    dims: tuple[tuple[str, ...], ...]
    netcdf: bool

    def dim_paths(self, leaf: int) -> list[str]:
        """Paths (relative to the group) of leaf ``leaf``'s axis dimensions."""
        parent = self.datasets[leaf].rpartition("/")[0]
        return [f"{parent}/{d}" if parent else d for d in self.dims[leaf]]


def group_names(
    path: str, leaf_paths: Sequence[str], shapes: Sequence[Sequence[int]], version: int
) -> GroupNames:
    """The names of a group at ``path`` whose leaves have keystr paths ``leaf_paths``."""
    if version < 2:
        datasets = tuple("array" + p for p in leaf_paths)
        return GroupNames(path, datasets, ((),) * len(leaf_paths), False)
    own = [path.rpartition("/")[2]]  # a leaf that is the whole value: named after its group
    space = _Namespace(reserved=(FRAME_DIM, STEP_VARIABLE))
    located = [space.path(key_segments(leaf_path) or own) for leaf_path in leaf_paths]
    dims = tuple(
        tuple(space.name(parent, f"{name}_dim{axis}") for axis in range(len(shape)))
        for (parent, name), shape in zip(located, shapes, strict=True)
    )
    datasets = tuple(f"{parent}/{name}" if parent else name for parent, name in located)
    return GroupNames(path, datasets, dims, True)


def run_names(spec: RunSpec, version: int) -> list[GroupNames]:
    """The names of every group of ``spec`` in a file of format ``version``."""
    return [
        group_names(
            path, [leaf.path for leaf in g.leaves], [leaf.shape for leaf in g.leaves], version
        )
        for g, path in zip(spec.groups, group_paths(spec.group_names, version), strict=True)
    ]


def leaf_names(spec: GroupSpec, path: str | None = None) -> tuple[str, ...]:
    """Each leaf's dataset in format 2, relative to its group (``pos``, ``a/b``).

    Args:
        spec: The group.
        path: The group's path in its run (default: the path it has alone).
    """
    where = group_paths([spec.name], 2)[0] if path is None else path
    return group_names(
        where, [leaf.path for leaf in spec.leaves], [leaf.shape for leaf in spec.leaves], 2
    ).datasets

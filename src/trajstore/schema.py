"""What a run stores: leaf, group and run specs, as plain data.

Specs are the contract between the pytree front (which derives them from a
config and an initial state), the HDF5 core (which lays them out on disk) and
the wire (which carries them as JSON). Nothing here imports JAX or gRPC.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from trajstore.bounds import (
    INT64_MAX,
    MAX_JSON_DEPTH,
    MAX_RANK,
    check_json_depth,
    check_leaf_extent,
    json_text_depth,
)
from trajstore.compression import Compression
from trajstore.errors import SchemaError

__all__ = [
    "MAX_RANK",
    "SUPPORTED_DTYPES",
    "GroupSpec",
    "LeafSpec",
    "RunSpec",
    "check_total_steps",
    "check_units",
    "dtype_name",
    "metadata_to_json",
    "numpy_dtype",
    "storage_dtype",
]

#: Every dtype a leaf may have, by canonical name. Stored little-endian.
SUPPORTED_DTYPES: tuple[str, ...] = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "bfloat16",
)

_BFLOAT16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
# HDF5 has no bfloat16: its bits are stored as uint16 and the dataset carries
# the true dtype in an attribute.
_STORAGE_OVERRIDES = {"bfloat16": np.dtype("<u2")}


def dtype_name(dtype: Any) -> str:
    """Canonical name of a supported dtype; :class:`SchemaError` for any other."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise SchemaError(f"unsupported dtype {dtype!r}") from None
    if dt == _BFLOAT16:
        return "bfloat16"
    name = str(dt.newbyteorder("=").name if dt.byteorder not in "=|" else dt.name)
    if name not in SUPPORTED_DTYPES:
        raise SchemaError(f"unsupported dtype {dt} (supported: {', '.join(SUPPORTED_DTYPES)})")
    return name


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The little-endian numpy dtype of a canonical dtype name."""
    if name == "bfloat16":
        return _BFLOAT16
    if name not in SUPPORTED_DTYPES:
        raise SchemaError(f"unsupported dtype {name!r}")
    dt: np.dtype[Any] = np.dtype(name)
    return dt.newbyteorder("<") if dt.itemsize > 1 else dt


def storage_dtype(name: str) -> np.dtype[Any]:
    """The dtype HDF5 stores a leaf of dtype ``name`` as."""
    return _STORAGE_OVERRIDES.get(name, numpy_dtype(name))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.size <= 1024:
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def metadata_to_json(metadata: Mapping[str, Any] | None) -> str:
    """Serialise user metadata; it must be a JSON object of plain values."""
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise SchemaError(f"metadata must be a mapping, got {type(metadata).__name__}")
    try:
        return json.dumps(dict(metadata), default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise SchemaError(f"metadata is not JSON serialisable: {e}") from None


_KINDS_WITH_CHILDREN = {"tuple", "list", "dict", "namedtuple", "node"}


def structure_leaves(description: Mapping[str, Any]) -> int:
    """Number of leaves a structure description (see :mod:`trajstore.pytree`) stands for.

    Raises:
        SchemaError: If ``description`` is not a well-formed description.
    """
    count = 0
    stack: list[Any] = [description]
    while stack:
        node = stack.pop()
        if not isinstance(node, Mapping) or not isinstance(node.get("t"), str):
            raise SchemaError("malformed structure description")
        kind = node["t"]
        if kind == "leaf":
            count += 1
        elif kind in _KINDS_WITH_CHILDREN:
            children = node.get("c", [])
            keys = node.get("k", [])
            if not isinstance(children, list) or not isinstance(keys, list):
                raise SchemaError("malformed structure description")
            if kind != "tuple" and kind != "list" and len(keys) != len(children):
                raise SchemaError("malformed structure description: keys and children differ")
            if kind in ("namedtuple", "node") and not isinstance(node.get("cls"), str):
                raise SchemaError("malformed structure description: class name")
            stack.extend(children)
        elif kind != "none":
            raise SchemaError(f"unknown structure node kind {kind!r}")
    return count


#: Longest ``units`` text a leaf may carry.
MAX_UNITS_CHARS = 64


def check_units(units: object, what: str) -> None:
    """Raise :class:`SchemaError` unless ``units`` is short printable ASCII text.

    Args:
        units: The units given.
        what: Whose units they are, for the message.
    """
    if not isinstance(units, str):
        raise SchemaError(f"{what}: units must be a string, got {type(units).__name__}")
    if len(units) > MAX_UNITS_CHARS or not all(" " <= c <= "~" for c in units):
        raise SchemaError(
            f"{what}: units must be at most {MAX_UNITS_CHARS} printable ASCII characters, "
            f"got {units[:80]!r}"
        )


def check_total_steps(total: object) -> None:
    """Raise :class:`SchemaError` unless ``total`` is ``None`` or an integer in [0, 2**63 - 1]."""
    if total is not None and (
        isinstance(total, bool)
        or not isinstance(total, int | np.integer)
        or not 0 <= total <= INT64_MAX
    ):
        raise SchemaError(
            f"total_steps must be None or an integer in [0, 2**63 - 1], got {total!r}"
        )


@dataclass(frozen=True)
class LeafSpec:
    """One array leaf of a group's value.

    Attributes:
        path: ``jax.tree_util.keystr`` of the leaf's path, e.g. ``"['pos']"``.
        dtype: Canonical dtype name (see :data:`SUPPORTED_DTYPES`).
        shape: Shape of one frame of the leaf.
        units: Physical units (``"nm"``), stored as the netCDF ``units``
            attribute; ``""``: none given.
    """

    path: str
    dtype: str
    shape: tuple[int, ...]
    units: str = ""

    def __post_init__(self) -> None:
        check_units(self.units, f"leaf {self.path or '<value>'}")
        dtype_name(numpy_dtype(self.dtype))
        shape = tuple(int(d) for d in self.shape)
        if any(d < 0 for d in shape):
            raise SchemaError(f"leaf {self.path}: negative dimension in shape {shape}")
        check_leaf_extent(f"leaf {self.path}", shape, self.np_dtype.itemsize, time_axis=False)
        object.__setattr__(self, "shape", shape)

    @property
    def dataset_name(self) -> str:
        """HDF5 dataset name, kUPS style: ``"array" + path``."""
        return "array" + self.path

    @property
    def np_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of the leaf."""
        return numpy_dtype(self.dtype)

    @property
    def frame_nbytes(self) -> int:
        """Bytes in one frame of this leaf."""
        return math.prod(self.shape) * self.np_dtype.itemsize

    def to_json(self) -> dict[str, Any]:
        """Plain-data form."""
        data: dict[str, Any] = {"path": self.path, "dtype": self.dtype, "shape": list(self.shape)}
        if self.units:
            data["units"] = self.units
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeafSpec:
        """Inverse of :meth:`to_json`."""
        return cls(
            str(data["path"]), str(data["dtype"]), tuple(data["shape"]), data.get("units", "")
        )


@dataclass(frozen=True)
class GroupSpec:
    """One logging group.

    Attributes:
        name: HDF5 group name, ``"group" + keystr(config path)``.
        time_axis: Whether the group has a time axis (``False`` for ``Once``).
        leaves: The value's array leaves, in pytree-leaf order.
        structure: Safe description of the value's pytree structure (see
            :mod:`trajstore.pytree`); opaque to the core.
        frequency: Description of the logging frequency (informational).
        compression: Compression policy, or ``None`` for none.
    """

    name: str
    time_axis: bool
    leaves: tuple[LeafSpec, ...]
    structure: Mapping[str, Any] = field(default_factory=dict)
    frequency: Mapping[str, Any] = field(default_factory=dict)
    compression: Compression | None = None

    def __post_init__(self) -> None:
        names = [leaf.dataset_name for leaf in self.leaves]
        if len(set(names)) != len(names):
            raise SchemaError(f"group {self.name}: duplicate leaf paths")
        if self.compression is not None and not isinstance(self.compression, Compression):
            raise SchemaError(
                f"group {self.name}: compression must be a Compression or None, "
                f"got {self.compression!r}"
            )
        for leaf in self.leaves:
            rank = len(leaf.shape) + bool(self.time_axis)
            if rank > MAX_RANK:
                raise SchemaError(
                    f"group {self.name} leaf {leaf.path}: {len(leaf.shape)} dimensions"
                    f"{' and a time axis' if self.time_axis else ''}; HDF5 stores at most "
                    f"{MAX_RANK}"
                )
            check_leaf_extent(
                f"group {self.name} leaf {leaf.path}",
                leaf.shape,
                leaf.np_dtype.itemsize,
                self.time_axis,
            )
        check_json_depth(self.structure, f"group {self.name}: structure description")
        check_json_depth(self.frequency, f"group {self.name}: frequency description")

    @property
    def frame_nbytes(self) -> int:
        """Bytes in one frame of the whole group."""
        return sum(leaf.frame_nbytes for leaf in self.leaves)

    def to_json(self) -> dict[str, Any]:
        """Plain-data form."""
        return {
            "name": self.name,
            "time_axis": self.time_axis,
            "leaves": [leaf.to_json() for leaf in self.leaves],
            "structure": self.structure,
            "frequency": self.frequency,
            "compression": None if self.compression is None else self.compression.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GroupSpec:
        """Inverse of :meth:`to_json`."""
        return cls(
            name=str(data["name"]),
            time_axis=bool(data["time_axis"]),
            leaves=tuple(LeafSpec.from_json(leaf) for leaf in data["leaves"]),
            structure=data.get("structure") or {},
            frequency=data.get("frequency") or {},
            compression=Compression.from_json(data.get("compression")),
        )


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to lay out a run before its first frame.

    Attributes:
        groups: The logging groups, in config-leaf order.
        config_structure: Safe description of the config pytree, whose
            leaves stand for the groups in order (lets readers focus a group
            with a view on the config).
        metadata_json: User metadata, as a JSON object.
        total_steps: The writer's hint of the run length, if given.
    """

    groups: tuple[GroupSpec, ...]
    config_structure: Mapping[str, Any] = field(default_factory=dict)
    metadata_json: str = "{}"
    total_steps: int | None = None

    def __post_init__(self) -> None:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise SchemaError("duplicate group names")
        check_total_steps(self.total_steps)
        check_json_depth(self.config_structure, "config structure description")
        if not isinstance(self.metadata_json, str):
            raise SchemaError("metadata_json must be a str")
        depth = json_text_depth(self.metadata_json)
        if depth > MAX_JSON_DEPTH:
            raise SchemaError(f"metadata nests {depth} deep; at most {MAX_JSON_DEPTH} is stored")

    @property
    def group_names(self) -> list[str]:
        """Group names in order."""
        return [g.name for g in self.groups]

    @property
    def metadata(self) -> dict[str, Any]:
        """User metadata as a dict."""
        value = json.loads(self.metadata_json)
        return value if isinstance(value, dict) else {}

    def to_json(self) -> dict[str, Any]:
        """Plain-data form."""
        return {
            "groups": [g.to_json() for g in self.groups],
            "config_structure": self.config_structure,
            "metadata": self.metadata_json,
            "total_steps": self.total_steps,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSpec:
        """Inverse of :meth:`to_json`."""
        groups: Sequence[Mapping[str, Any]] = data["groups"]
        total = data.get("total_steps")
        return cls(
            groups=tuple(GroupSpec.from_json(g) for g in groups),
            config_structure=data.get("config_structure") or {},
            metadata_json=str(data.get("metadata") or "{}"),
            total_steps=None if total is None else int(total),
        )

"""The JAX side: views to flat host leaves, and flat leaves back to pytrees.

Pytree structure is stored as a *safe description*: JSON naming container
kinds, keys, and the module and qualified name of namedtuple and registered
node classes. Rebuilding never imports anything: a class is used only if its
module is already imported on the reading side (and, for a registered node,
JAX still knows how to unflatten it). Otherwise that node comes back as a
dict of its children. A ``like=`` template overrides all of this.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import jax
import numpy as np
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey, keystr

from trajstore.errors import SchemaError
from trajstore.schema import LeafSpec, dtype_name

__all__ = [
    "View",
    "describe",
    "leaf_specs",
    "rebuild",
    "to_host",
    "view",
]

S = TypeVar("S")
R = TypeVar("R")

_REGISTRY = jax.tree_util.default_registry
_LEAF = jax.tree_util.tree_structure(0)


class View(Generic[S, R]):
    """A named function that picks what to store from the state (kUPS ``view``)."""

    __slots__ = ("__weakref__", "where")

    def __init__(self, where: Callable[[S], R]) -> None:
        self.where = where

    def __call__(self, state: S, /) -> R:
        """Apply the view."""
        return self.where(state)

    def __repr__(self) -> str:
        return f"view({self.where!r})"


def view(where: Callable[[S], R], /, cls: type[S] | None = None) -> View[S, R]:
    """Wrap ``where`` as a :class:`View` (``cls`` is accepted for kUPS compatibility)."""
    return View(where)


# ------------------------------------------------------------------ leaves


def _leaf_dtype(path: str, leaf: object) -> str:
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
        return dtype_name(leaf.dtype)
    if isinstance(leaf, (bool, int, float, complex)):
        raise SchemaError(
            f"leaf {path or '<root>'} is a Python {type(leaf).__name__}, which has no fixed "
            f"dtype; store np.float32(x) (or similar) or a JAX array"
        )
    raise SchemaError(
        f"leaf {path or '<root>'} is a {type(leaf).__name__}; leaves must be numpy or JAX "
        f"arrays or numpy scalars"
    )


def leaf_specs(value: Any) -> list[LeafSpec]:
    """Describe every leaf of ``value``; :class:`SchemaError` for unstorable leaves."""
    specs = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
        name = keystr(path)
        if "/" in name:
            raise SchemaError(f"leaf path {name} contains '/', which HDF5 names cannot hold")
        specs.append(LeafSpec(name, _leaf_dtype(name, leaf), tuple(np.shape(leaf))))
    return specs


def start_host_copies(leaves: Sequence[Any]) -> None:
    """Start device-to-host copies of every JAX leaf, so they overlap."""
    for leaf in leaves:
        if isinstance(leaf, jax.Array):
            leaf.copy_to_host_async()


def to_host(leaf: Any, *, owned: bool) -> np.ndarray:
    """A little-endian host array with the value of ``leaf`` now.

    Args:
        leaf: numpy or JAX array or numpy scalar.
        owned: Whether nobody else holds ``leaf`` (a fresh result of a compiled
            view). Otherwise the data is copied, since the caller may mutate
            or donate it as soon as ``log()`` returns.
    """
    array = np.asarray(leaf)
    if array.dtype.byteorder == ">":
        return array.astype(array.dtype.newbyteorder("<"))
    if owned and isinstance(leaf, jax.Array):
        return array
    return array.copy()


# ------------------------------------------------------- structure: write


def _json_aux(value: Any) -> Any:
    """Encode pytree node data as tagged JSON; raise ``TypeError`` if impossible."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"tuple": [_json_aux(v) for v in value]}
    if isinstance(value, list):
        return {"list": [_json_aux(v) for v in value]}
    raise TypeError(type(value).__name__)


def _from_json_aux(value: Any) -> Any:
    if isinstance(value, dict):
        if "tuple" in value:
            return tuple(_from_json_aux(v) for v in value["tuple"])
        return [_from_json_aux(v) for v in value["list"]]
    return value


def _key_name(entry: Any) -> str | int:
    key: Any = str(entry)
    if isinstance(entry, DictKey):
        key = entry.key
    elif isinstance(entry, GetAttrKey):
        key = entry.name
    elif isinstance(entry, (SequenceKey, FlattenedIndexKey)):
        key = entry.idx if isinstance(entry, SequenceKey) else entry.key
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        return str(key)
    return key


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def describe(value: Any, is_leaf: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """A safe JSON description of ``value``'s pytree structure (leaves excluded)."""
    treedef: Any = jax.tree_util.tree_structure(value, is_leaf=is_leaf)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        return {"t": "leaf"}
    node_type, aux = treedef.node_data()
    children = jax.tree_util.tree_flatten_with_path(value, is_leaf=lambda x: x is not value)[0]
    described = [describe(child, is_leaf) for _, child in children]
    keys = [_key_name(path[0]) for path, _ in children]
    if node_type is type(None):
        return {"t": "none"}
    if node_type is tuple:
        return {"t": "tuple", "c": described}
    if node_type is list:
        return {"t": "list", "c": described}
    if node_type is dict:
        return {"t": "dict", "k": keys, "c": described}
    if issubclass(node_type, tuple) and hasattr(node_type, "_fields"):
        return {"t": "namedtuple", "cls": _class_name(node_type), "k": keys, "c": described}
    node: dict[str, Any] = {"t": "node", "cls": _class_name(node_type), "k": keys, "c": described}
    # Node data that JSON cannot carry is left out: readers rebuild such a node as a dict.
    with contextlib.suppress(TypeError):
        node["aux"] = _json_aux(aux)
    return node


# -------------------------------------------------------- structure: read


def _loaded_class(name: str) -> type | None:
    """The class called ``module:qualname`` if its module is already imported."""
    module_name, _, qualname = name.partition(":")
    obj: Any = sys.modules.get(module_name)
    if obj is None or "<" in qualname:
        return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, type) else None


def _node_from_children(desc: Mapping[str, Any], children: list[Any]) -> Any:
    keys = desc.get("k", [])
    cls = _loaded_class(desc["cls"])
    if desc["t"] == "namedtuple":
        if cls is not None and issubclass(cls, tuple) and list(cls._fields) == keys:  # type: ignore[attr-defined]
            return cls(*children)
    elif cls is not None and "aux" in desc:
        try:
            node = jax.tree_util.PyTreeDef.from_node_data_and_children(
                _REGISTRY, (cls, _from_json_aux(desc["aux"])), [_LEAF] * len(children)
            )
            return node.unflatten(children)
        except (ValueError, TypeError):
            pass  # no longer registered, or built differently: fall back
    return dict(zip(keys, children, strict=True))


def _build(desc: Mapping[str, Any], leaves: Iterator[Any]) -> Any:
    kind = desc["t"]
    if kind == "leaf":
        return next(leaves)
    if kind == "none":
        return None
    children = [_build(child, leaves) for child in desc.get("c", [])]
    if kind == "tuple":
        return tuple(children)
    if kind == "list":
        return children
    if kind == "dict":
        return dict(zip(desc["k"], children, strict=True))
    if kind in ("namedtuple", "node"):
        return _node_from_children(desc, children)
    raise SchemaError(f"unknown structure node kind {kind!r}")


def rebuild(description: Mapping[str, Any], leaves: Sequence[Any], *, like: Any = None) -> Any:
    """Rebuild a pytree from its description (or from ``like``'s structure) and leaves."""
    if like is not None:
        treedef: Any = jax.tree_util.tree_structure(like)
        if treedef.num_leaves != len(leaves):
            raise SchemaError(
                f"like= has {treedef.num_leaves} leaves, the stored value {len(leaves)}"
            )
        return jax.tree_util.tree_unflatten(treedef, list(leaves))
    iterator = iter(leaves)
    try:
        value = _build(description, iterator)
    except (KeyError, StopIteration, TypeError, ValueError) as e:
        raise SchemaError(f"stored pytree structure is damaged: {e!r}") from e
    if next(iterator, iterator) is not iterator:
        raise SchemaError("stored pytree structure has fewer leaves than the group")
    return value

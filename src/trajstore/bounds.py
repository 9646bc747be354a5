"""What a run can hold: the bounds every number and description from outside is checked against.

One place for each bound. Specs (so local writers too), the wire, the
store's request checks and the run-file reader all use these, so that what
is accepted can always be read back: a description is refused on the way in
with the same depth that reading it back allows, and a run file holding more
than that is a :class:`~trajstore.errors.SchemaError` of that run alone.
Imports neither JAX, gRPC nor HDF5.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trajstore.errors import InvalidArgumentError, SchemaError

__all__ = [
    "INT64_MAX",
    "MAX_FRAMES",
    "MAX_JSON_DEPTH",
    "MAX_RANK",
    "MAX_TARGET_CHUNK_BYTES",
    "check_count",
    "check_json_depth",
    "check_leaf_extent",
    "json_text_depth",
    "loads_json",
]

#: Largest signed 64-bit integer: numpy sizes, HDF5 attributes and protobuf int64 fields.
INT64_MAX = (1 << 63) - 1

#: Dimensions HDF5 gives a dataset, the time axis included.
MAX_RANK = 32

#: Frames a time-axis group can hold: a frame index beyond it (a step far
#: past the run's end) is refused before anything is queued (HDF5 numbers
#: chunks with 32 bits).
MAX_FRAMES = 1 << 31

#: Deepest nesting of a JSON description (pytree structure, frequency,
#: config structure, metadata): a pytree nests about half as deep. Checked on
#: the text before it is parsed, on the way in and when a run file is read.
MAX_JSON_DEPTH = 128

#: Largest ``Compression.target_chunk_bytes``: HDF5 chunks must stay under 4 GiB.
MAX_TARGET_CHUNK_BYTES = 1 << 30


def check_count(
    value: object, what: str, error: type[InvalidArgumentError] = InvalidArgumentError
) -> int:
    """``value`` as an int in ``[0, INT64_MAX]``; else ``error``.

    For counts that travel or are stored as int64 (``actual_steps``, ...).
    """
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise error(f"{what} must be an integer, got {value!r}") from None
    if not 0 <= number <= INT64_MAX:
        raise error(f"{what} must lie in [0, 2**63 - 1], got {number}")
    return number


def check_leaf_extent(what: str, shape: Sequence[int], itemsize: int, time_axis: bool) -> None:
    """Raise :class:`SchemaError` unless every array of a leaf fits numpy's sizes.

    numpy refuses a shape whose non-zero dimensions times the item size pass
    2**63 - 1, also when another dimension is 0 (no bytes at all). Frames of
    such an empty leaf cost nothing, so a time axis may hold all
    :data:`MAX_FRAMES` of them and a read of them all must fit too; frames
    with bytes are bounded by the disk long before.
    """
    empty = any(d == 0 for d in shape)
    frames = MAX_FRAMES if time_axis and empty else 1
    extent = itemsize * math.prod(d for d in shape if d) * frames
    if extent > INT64_MAX:
        times = f" times {MAX_FRAMES} frames" if frames > 1 else ""
        raise SchemaError(
            f"{what}: shape {tuple(shape)} is too large to store (its non-zero dimensions "
            f"times {itemsize} bytes{times} pass 2**63 - 1)"
        )


# A JSON string, escapes included (linear: no backtracking).
_JSON_STRING = re.compile(rb'"(?:[^"\\]+|\\.)*"', re.DOTALL)
_OPEN = np.frombuffer(b"[{", np.uint8)
_CLOSE = np.frombuffer(b"]}", np.uint8)


def json_text_depth(text: str | bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, without parsing it.

    A scalar is 0 deep, ``[]`` 1, ``[[1]]`` 2. Brackets inside strings do
    not count; an unterminated string may make invalid JSON look deeper.
    """
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if b'"' in raw:
        raw = _JSON_STRING.sub(b"", raw)
    codes = np.frombuffer(raw, np.uint8)
    steps = np.isin(codes, _OPEN).astype(np.int32) - np.isin(codes, _CLOSE).astype(np.int32)
    return int(np.max(np.cumsum(steps), initial=0))


def loads_json(text: str | bytes, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON description; :class:`SchemaError` if it is invalid or nests too deep."""
    if not isinstance(text, str | bytes):
        raise SchemaError(f"{what} is not JSON text but {type(text).__name__}")
    depth = json_text_depth(text)
    if depth > max_depth:
        raise SchemaError(f"{what} nests {depth} deep; at most {max_depth} is stored")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: not within the bound
        raise SchemaError(f"{what} is not valid JSON ({e})") from None


def check_json_depth(value: Any, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`SchemaError` if lists and mappings in ``value`` nest deeper than ``max_depth``.

    The same depth :func:`loads_json` measures on the text ``value`` becomes.
    Iterative, so a description of any depth (even one containing itself)
    is refused rather than overflowing the stack.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth + 1 > max_depth:
            raise SchemaError(
                f"{what} nests deeper than {max_depth}; at most {max_depth} is stored"
            )
        stack.extend((child, depth + 1) for child in children)

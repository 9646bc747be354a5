"""Checks of the numeric settings that writers and the storage core take."""

from __future__ import annotations

import math
import numbers

from trajstore.errors import InvalidArgumentError

__all__ = ["check_positive"]


def check_positive(
    name: str, value: object, *, integer: bool = False, optional: bool = False
) -> None:
    """Raise :class:`InvalidArgumentError` unless ``value`` is a positive finite number.

    ``integer``: it must be an int; ``optional``: ``None`` is allowed too.
    Writers check their settings with it before they touch a file.
    """
    if value is None and optional:
        return
    kind = numbers.Integral if integer else numbers.Real
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or not math.isfinite(value)
        or value <= 0
    ):
        what = "integer" if integer else "number"
        raise InvalidArgumentError(f"{name} must be a positive {what}, got {value!r}")

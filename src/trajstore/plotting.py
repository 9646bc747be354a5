"""Plots a scientist keeps: one leaf of a group against the step.

The step on x, the leaf's name and units on y, the run and group in the
title. Used by ``trajstore plot``; works on any group reader, local or remote.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from trajstore.errors import FieldNotFoundError, SchemaError
from trajstore.schema import GroupSpec
from trajstore.store.layout import step_interval
from trajstore.store.naming import group_paths, leaf_names

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from trajstore.reading import GroupReader

__all__ = ["pick_field", "plot_field"]


def pick_field(spec: GroupSpec, field: str | None) -> int:
    """The leaf ``field`` names (``total``, ``a/b``, ``['total']``); ``None``: the only one.

    Raises:
        FieldNotFoundError: No such leaf, or ``None`` for a group of several
            (the message lists them).
    """
    names = leaf_names(spec)
    if field is None and len(names) == 1:
        return 0
    for position, (leaf, name) in enumerate(zip(spec.leaves, names, strict=True)):
        if field in (name, leaf.path, f"['{name}']", f".{name}"):
            return position
    if len(names) == 1:
        raise FieldNotFoundError(
            f"{spec.name} stores one value ({names[0]}), not {field!r}: leave the field out"
        )
    given = "choose one" if field is None else f"no field {field!r}"
    raise FieldNotFoundError(f"{spec.name} has several fields; {given} among: {', '.join(names)}")


def plot_field(group: GroupReader[Any], field: str | None = None, *, run: str = "") -> Figure:
    """A figure of one leaf of ``group`` against the step (an array leaf: its mean per frame).

    Args:
        group: A local or remote group reader.
        field: The leaf (see :func:`pick_field`).
        run: The run's name, for the title.

    Raises:
        SchemaError: The group is logged once (it has no steps), or has no
            frames yet.
        FieldNotFoundError: See :func:`pick_field`.
    """
    from matplotlib.figure import Figure

    spec = group.spec
    if not spec.time_axis:
        raise SchemaError(f"{spec.name} is logged once: it has no steps to plot against")
    position = pick_field(spec, field)
    if len(group) == 0:
        raise SchemaError(f"{spec.name} of {run or 'the run'} has no frames yet")
    values = np.asarray(group.source.read([position], slice(None))[0])
    series = values.reshape(len(values), -1).mean(axis=1) if values.ndim > 1 else values
    interval = step_interval(spec)
    label = leaf_names(spec)[position]
    units = spec.leaves[position].units
    shown = f"{label} [{units}]" if units else label
    figure = Figure(figsize=(8, 4))
    axes = figure.add_subplot()
    axes.plot(np.arange(len(series)) * (interval or 1), series)
    axes.set_xlabel("step" if interval else "frame")
    axes.set_ylabel(shown if values.ndim == 1 else f"mean of {shown}")
    where = group_paths([spec.name], 2)[0]
    axes.set_title(f"{run} — {where}" if run else where)
    figure.tight_layout()
    return figure

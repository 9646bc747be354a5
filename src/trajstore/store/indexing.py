"""numpy basic indexing, planned as an HDF5 read plus a cheap numpy fix-up.

h5py reads ints and positive-step slices. A plan turns any numpy basic index
(ints, negative ints, slices with any step, ``...``, tuples of these) into
the smallest such hyperslab plus a numpy index that finishes the job
(reversing negative-step axes), with numpy's exact result and errors.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from types import EllipsisType
from typing import TypeAlias

from trajstore.errors import FrameIndexError, InvalidArgumentError

__all__ = ["Index", "Plan", "plan_index"]

Index: TypeAlias = int | slice | EllipsisType | tuple["Index", ...]


@dataclass(frozen=True)
class Plan:
    """How to read ``array[index]`` from a dataset.

    Attributes:
        hyperslab: Selection for h5py: ints and positive-step slices only.
        fixup: numpy index applied to what h5py returns.
        shape: Shape of the result.
        scalar: Whether numpy returns a scalar rather than an array (every
            axis taken by an integer and no ``...``).
    """

    hyperslab: tuple[int | slice, ...]
    fixup: tuple[slice, ...]
    shape: tuple[int, ...]
    scalar: bool

    @property
    def needs_fixup(self) -> bool:
        """Whether :attr:`fixup` does anything."""
        return any(s.step == -1 for s in self.fixup)


def _as_components(index: object) -> tuple[object, ...]:
    return index if isinstance(index, tuple) else (index,)


def plan_index(index: object, shape: tuple[int, ...]) -> Plan:
    """Plan ``array[index]`` for an array of ``shape``.

    Raises:
        FrameIndexError: Where numpy raises ``IndexError``: an index out of
            bounds, too many indices, two ellipses, or an unsupported index
            type (basic indexing only: no arrays, booleans or ``None``).
    """
    components = _as_components(index)
    ellipses = sum(1 for c in components if c is Ellipsis)
    if ellipses > 1:
        raise FrameIndexError("an index can only have a single ellipsis ('...')")
    indexed = len(components) - ellipses
    if indexed > len(shape):
        raise FrameIndexError(
            f"too many indices for array: array is {len(shape)}-dimensional, "
            f"but {indexed} were indexed"
        )
    expanded: list[object] = []
    for c in components:
        if c is Ellipsis:
            expanded.extend([slice(None)] * (len(shape) - indexed))
        else:
            expanded.append(c)
    expanded.extend([slice(None)] * (len(shape) - len(expanded)))

    hyperslab: list[int | slice] = []
    fixup: list[slice] = []
    out_shape: list[int] = []
    for axis, (component, size) in enumerate(zip(expanded, shape, strict=True)):
        if isinstance(component, slice):
            try:
                r = range(*component.indices(size))
            except ValueError as e:  # a zero step
                raise InvalidArgumentError(str(e)) from None
            except TypeError:
                raise FrameIndexError(
                    f"slice indices must be integers or None, got {component!r}"
                ) from None
            if len(r) == 0:
                hyperslab.append(slice(0, 0))
                fixup.append(slice(None))
            elif r.step > 0:
                hyperslab.append(slice(r.start, r[-1] + 1, r.step))
                fixup.append(slice(None))
            else:
                hyperslab.append(slice(r[-1], r.start + 1, -r.step))
                fixup.append(slice(None, None, -1))
            out_shape.append(len(r))
            continue
        if isinstance(component, bool) or component is None:
            raise FrameIndexError(f"unsupported index {component!r}: basic indexing only")
        try:
            i = operator.index(component)  # type: ignore[arg-type]
        except TypeError:
            raise FrameIndexError(
                f"only integers, slices (`:`) and ellipsis (`...`) are valid indices, "
                f"got {type(component).__name__}"
            ) from None
        if not -size <= i < size:
            raise FrameIndexError(f"index {i} is out of bounds for axis {axis} with size {size}")
        hyperslab.append(i + size if i < 0 else i)
    scalar = not out_shape and ellipses == 0
    return Plan(tuple(hyperslab), tuple(fixup), tuple(out_shape), scalar)

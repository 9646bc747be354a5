"""When a group logs: the ``LoggingFrequency`` protocol and its two stock forms."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from types import EllipsisType
from typing import Any, Protocol, runtime_checkable

__all__ = ["EveryNStep", "LoggingFrequency", "Once", "frequency_to_json"]


@runtime_checkable
class LoggingFrequency(Protocol):
    """Decides at which steps a group logs and where each frame is stored."""

    def should_log(self, step: int) -> bool:
        """Whether the group logs at ``step``."""
        ...

    def leading_shape(self, total_steps: int) -> tuple[int, ...]:
        """Leading (time) dimensions for a run of ``total_steps`` steps.

        ``()`` means the group has no time axis (it is logged once). trajstore
        treats the length as a hint: time axes grow as frames arrive.
        """
        ...

    def dataset_index(self, step: int) -> int | EllipsisType:
        """Index on the time axis where ``step``'s frame is stored (``...``: no time axis)."""
        ...


@dataclass(frozen=True)
class Once:
    """Logs step 0 only; the stored value has no time axis."""

    def should_log(self, step: int) -> bool:
        """True only for step 0."""
        return step == 0

    def leading_shape(self, total_steps: int) -> tuple[int, ...]:
        """No time axis."""
        return ()

    def dataset_index(self, step: int) -> EllipsisType:
        """The whole dataset."""
        return ...


@dataclass(frozen=True)
class EveryNStep:
    """Logs steps 0, n, 2n, ... at time index ``step // n``.

    Args:
        n: Interval between logged steps; a positive integer.
    """

    n: int

    def __post_init__(self) -> None:
        try:
            n = operator.index(self.n)
        except TypeError:
            raise TypeError(f"EveryNStep(n) needs an integer, got {self.n!r}") from None
        if n < 1:
            raise ValueError(f"EveryNStep(n) needs n >= 1, got {n}")
        object.__setattr__(self, "n", n)

    def should_log(self, step: int) -> bool:
        """True when ``step`` is a multiple of ``n``."""
        return step % self.n == 0

    def leading_shape(self, total_steps: int) -> tuple[int, ...]:
        """``(ceil(total_steps / n),)``: the frames a run of that length logs."""
        return ((total_steps + self.n - 1) // self.n,)

    def dataset_index(self, step: int) -> int:
        """``step // n``."""
        return step // self.n


def frequency_to_json(frequency: LoggingFrequency) -> dict[str, Any]:
    """Describe a frequency for the file and the wire (informational only)."""
    if isinstance(frequency, Once):
        return {"kind": "once"}
    if isinstance(frequency, EveryNStep):
        return {"kind": "every_n_step", "n": frequency.n}
    return {"kind": "custom", "name": type(frequency).__qualname__}

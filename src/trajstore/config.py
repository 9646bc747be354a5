"""What to log and when: the ``Logger`` protocol and ``WriterGroupConfig``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from trajstore.compression import Compression
from trajstore.errors import SchemaError
from trajstore.frequency import LoggingFrequency
from trajstore.schema import check_units

__all__ = ["Logger", "WriterGroupConfig"]

State = TypeVar("State")
Storage = TypeVar("Storage")
State_contra = TypeVar("State_contra", contravariant=True)


@runtime_checkable
class Logger(Protocol[State_contra]):
    """Anything a simulation loop can log its state to."""

    def __enter__(self) -> Any:
        """Open the destination."""
        ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> Any:
        """Make everything durable and close."""
        ...

    def log(self, state: State_contra, step: int) -> None:
        """Record what the config selects from ``state`` at ``step``.

        Everything needed from ``state`` is taken before this returns, so the
        caller may mutate or donate it right after.
        """
        ...


@dataclass(frozen=True)
class WriterGroupConfig(Generic[State, Storage]):
    """One logging group: what to take from the state, how often, how to compress.

    Args:
        view: Function (e.g. a :func:`~trajstore.view`) from the state to the
            pytree of arrays to store.
        logging_frequency: When to log (:class:`~trajstore.EveryNStep`,
            :class:`~trajstore.Once`, or your own ``LoggingFrequency``).
        compression: Compression policy, or ``None`` for uncompressed data.
        units: Physical units of the stored leaves, kept as each dataset's
            netCDF ``units`` attribute (and used by xarray and plots): one
            string where the view returns one array, else a mapping from a
            leaf's path (``"total"``, ``"a/b"``, or kUPS's ``"['total']"``)
            to its units. Leaves left out have none.
    """

    view: Callable[[State], Storage]
    logging_frequency: LoggingFrequency
    compression: Compression | None = field(default_factory=Compression, kw_only=True)
    units: str | Mapping[str, str] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        # Refused here, before a writer touches any file.
        if not callable(self.view):
            raise SchemaError(f"view must be callable, got {self.view!r}")
        if not isinstance(self.logging_frequency, LoggingFrequency):
            raise SchemaError(
                f"logging_frequency must be a LoggingFrequency (should_log, leading_shape, "
                f"dataset_index), got {self.logging_frequency!r}"
            )
        if self.compression is not None and not isinstance(self.compression, Compression):
            raise SchemaError(
                f"compression must be a Compression or None, got {self.compression!r}"
            )
        if isinstance(self.units, Mapping):
            for key, units in self.units.items():
                if not isinstance(key, str):
                    raise SchemaError(f"units: leaf paths must be strings, got {key!r}")
                check_units(units, f"units of {key!r}")
        elif self.units is not None:
            check_units(self.units, "units")

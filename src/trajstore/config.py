"""What to log and when: the ``Logger`` protocol and ``WriterGroupConfig``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from trajstore.compression import Compression
from trajstore.errors import SchemaError
from trajstore.frequency import LoggingFrequency

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
    """

    view: Callable[[State], Storage]
    logging_frequency: LoggingFrequency
    compression: Compression | None = field(default_factory=Compression, kw_only=True)

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

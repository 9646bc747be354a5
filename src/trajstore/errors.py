"""The trajstore exception hierarchy.

Every error trajstore raises on purpose is a :class:`TrajstoreError`. Each
subclass also derives from the builtin exception a Python user would expect
(``KeyError`` for a missing group, ``ValueError`` for a bad frame, ...), so
existing ``except`` clauses keep working. Each class names the gRPC status
code it travels as (``status``), so an error raised on the server reaches a
remote caller as the same class.
"""

from __future__ import annotations

__all__ = [
    "TrajstoreError",
    "InvalidArgumentError",
    "SchemaError",
    "FrameMismatchError",
    "StepOrderError",
    "InvalidRunNameError",
    "NotFoundError",
    "RunNotFoundError",
    "GroupNotFoundError",
    "FieldNotFoundError",
    "AlreadyExistsError",
    "RunExistsError",
    "FailedPreconditionError",
    "NotOpenError",
    "RunLockedError",
    "RunChangedError",
    "FrameIndexError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "PermissionDeniedError",
    "StorageError",
    "WriterFailedError",
    "RunDamagedError",
    "UnavailableError",
    "JournalError",
    "JournalLeftWarning",
    "error_class_for",
]


class TrajstoreError(Exception):
    """Base class of every error raised by trajstore."""

    #: Name of the gRPC status code this error travels as.
    status: str = "UNKNOWN"

    def wire_fields(self) -> dict[str, int]:
        """Integer fields the error carries to the client besides its message."""
        return {}

    @classmethod
    def from_wire(cls, message: str, fields: dict[str, int]) -> TrajstoreError:
        """The error as the server raised it, from its message and :meth:`wire_fields`."""
        return cls(message)


class InvalidArgumentError(TrajstoreError, ValueError):
    """The caller passed something trajstore cannot accept."""

    status = "INVALID_ARGUMENT"


class SchemaError(InvalidArgumentError):
    """A config, leaf type, dtype or shape cannot be stored."""


class FrameMismatchError(InvalidArgumentError):
    """A logged frame does not match the schema its group was created with."""


class StepOrderError(InvalidArgumentError):
    """A step is negative or does not increase."""


class InvalidRunNameError(InvalidArgumentError):
    """A run name is not a safe relative name (see DESIGN.md section 4)."""


class NotFoundError(TrajstoreError, KeyError):
    """Something named does not exist."""

    status = "NOT_FOUND"

    def __str__(self) -> str:
        # KeyError quotes its argument; a message reads better without.
        return str(self.args[0]) if self.args else ""


class RunNotFoundError(NotFoundError):
    """No run of that name exists."""


class GroupNotFoundError(NotFoundError):
    """The run has no group of that name."""


class FieldNotFoundError(NotFoundError):
    """The group has no leaf (field) of that name."""


class AlreadyExistsError(TrajstoreError, FileExistsError):
    """Something that must be new already exists."""

    status = "ALREADY_EXISTS"


class RunExistsError(AlreadyExistsError):
    """A run opened with ``mode="create"`` already exists."""


class FailedPreconditionError(TrajstoreError, RuntimeError):
    """The operation is not allowed in the current state."""

    status = "FAILED_PRECONDITION"


class NotOpenError(FailedPreconditionError):
    """A writer or reader was used outside its ``with`` block, or after closing."""


class RunLockedError(FailedPreconditionError):
    """Another writer holds the run."""

    #: Who holds it, in words, when the run's lock named its holder (else "").
    holder: str = ""


class RunChangedError(FailedPreconditionError):
    """The run was replaced or rewound while a read of several calls went on.

    A read that spans calls (``follow()``, ``read_chunked``, ``pull``) pins
    the version of the run it started on, its *generation*; an overwrite or a
    restart from a checkpoint (an append that rewrites frames already
    stored) starts a new one, and such a read ends with this error rather
    than join frames of two versions.

    Attributes:
        old_generation: The generation the read started on.
        new_generation: The run's generation now.
        rewind_frame: The first frame of the read's group that the new
            version may differ in (frames before it are the same); ``None``
            when the store does not know (the run was replaced, or changed
            more than once): then treat every frame as changed.
    """

    def __init__(
        self,
        message: str,
        *,
        old_generation: int = 0,
        new_generation: int = 0,
        rewind_frame: int | None = None,
    ) -> None:
        super().__init__(message)
        self.old_generation = old_generation
        self.new_generation = new_generation
        self.rewind_frame = rewind_frame

    def wire_fields(self) -> dict[str, int]:
        """The generations and the rewind frame, for the client."""
        fields = {"old_generation": self.old_generation, "new_generation": self.new_generation}
        if self.rewind_frame is not None:
            fields["rewind_frame"] = self.rewind_frame
        return fields

    @classmethod
    def from_wire(cls, message: str, fields: dict[str, int]) -> RunChangedError:
        """The error from its message and :meth:`wire_fields`."""
        return cls(
            message,
            old_generation=fields.get("old_generation", 0),
            new_generation=fields.get("new_generation", 0),
            rewind_frame=fields.get("rewind_frame"),
        )


class FrameIndexError(TrajstoreError, IndexError):
    """An index lies outside the frames written."""

    status = "OUT_OF_RANGE"


class ResourceExhaustedError(TrajstoreError, RuntimeError):
    """A configured limit was exceeded."""

    status = "RESOURCE_EXHAUSTED"


class UnauthenticatedError(TrajstoreError, PermissionError):
    """Missing or wrong credentials."""

    status = "UNAUTHENTICATED"


class PermissionDeniedError(TrajstoreError, PermissionError):
    """The credentials do not allow this operation."""

    status = "PERMISSION_DENIED"


class StorageError(TrajstoreError, OSError):
    """Reading or writing the HDF5 file failed."""

    status = "INTERNAL"


class WriterFailedError(StorageError):
    """The background writer failed; the run accepts no more frames."""


class RunDamagedError(StorageError):
    """A run file cannot be read: it is not a well-formed HDF5 file any more.

    Travels as ``DATA_LOSS``. Only that run is affected; the store goes on
    serving every other.
    """

    status = "DATA_LOSS"


class UnavailableError(TrajstoreError, ConnectionError):
    """The store cannot be reached."""

    status = "UNAVAILABLE"


class JournalError(TrajstoreError, OSError):
    """A spill journal cannot be created, written or read, or is not a journal."""

    status = "DATA_LOSS"


class JournalLeftWarning(UserWarning):
    """A writer closed while the store was away: its journal awaits ``trajstore push``."""


def _all_subclasses(cls: type[TrajstoreError]) -> list[type[TrajstoreError]]:
    found: list[type[TrajstoreError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


def error_class_for(name: str) -> type[TrajstoreError] | None:
    """Return the error class called ``name`` (from the closed set above), if any.

    Used to rebuild a server-side error on the client. Only classes defined in
    this module are eligible: the name is looked up, never imported.
    """
    candidates: list[type[TrajstoreError]] = [TrajstoreError, *_all_subclasses(TrajstoreError)]
    for cls in candidates:
        if cls.__name__ == name and cls.__module__ == __name__:
            return cls
    return None

"""Which version of a run a read that spans several handles is reading.

A long read does not hold its run's handle while it sends: it reads a
piece under the handle, lets go, sends the piece, and takes the handle
again for the next (so a slow reader never keeps a writer out). Between two
pieces a writer may have reopened the run. Reopening it to append (a writer
that reconnects, a resume) keeps the frames the read planned; overwriting
it, or rewinding it below them, does not -- and then the read must end with
an error, never go on with pieces of another version of the run.

:class:`RunVersion` is what the read notes when it plans, and checks each
time it takes a handle again. It sees an overwrite (a new file) and a
rewind still below the planned frames; a rewind that has grown back past
them by the next check looks like an append -- telling those apart needs a
version recorded in the file itself (a generation, issue 16 item 6), which
belongs here as one more field.
"""

from __future__ import annotations

from dataclasses import dataclass

from trajstore.errors import FailedPreconditionError
from trajstore.schema import GroupSpec
from trajstore.store.reader import RunFileReader

__all__ = ["RunVersion"]


@dataclass(frozen=True)
class RunVersion:
    """What must still hold for the frames a read planned to be the ones it reads.

    Attributes:
        run: The run's name (for the error).
        file_id: The file, as (device, inode): an overwritten run is a new file.
        created: When the file was laid out, as recorded in it.
        groups: The groups' layout, as the file describes them.
    """

    run: str
    file_id: tuple[int, int]
    created: float | None
    groups: tuple[GroupSpec, ...]

    @classmethod
    def of(cls, run: str, reader: RunFileReader) -> RunVersion:
        """The version of ``run`` that ``reader`` has open."""
        return cls(
            run=run,
            file_id=reader.file_id,
            created=reader.created,
            groups=reader.spec.groups,
        )

    def check(self, reader: RunFileReader, *, frames_now: int, frames_planned: int) -> None:
        """Raise unless ``reader`` still shows the version this read planned on.

        Args:
            reader: The handle taken again for the next piece.
            frames_now: Frames of the read's group that reads see now.
            frames_planned: Frames of that group when the read was planned.

        Raises:
            FailedPreconditionError: The run was overwritten, or rewound below
                the frames the read planned, since it began: read again.
        """
        if frames_now >= frames_planned and RunVersion.of(self.run, reader) == self:
            return
        raise FailedPreconditionError(
            f"run {self.run!r} was rewritten while it was being read "
            f"(overwritten, or its writer went back below frame {frames_planned}): read again"
        )

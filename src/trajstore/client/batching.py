"""Frames to blocks, on the client: each group's consecutive frames, gathered.

The remote writer's encoder thread feeds a :class:`FrameBatcher` the frames
of each step; it gathers every group's consecutive frames and hands a block
to its ``on_sealed`` callback once the block is full (a whole number of the
group's chunks, at most :data:`BLOCK_TARGET_BYTES`), the frames stop being
consecutive, or it is sealed from outside (a flush, ``send_interval``).
It knows nothing of streams, sessions or threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from trajstore.schema import RunSpec
from trajstore.store import layout

__all__ = ["BLOCK_TARGET_BYTES", "SMALL_FRAME_BYTES", "FrameBatcher", "block_buffers"]

#: A block aims at this many bytes (fewer when a group's batch is smaller).
BLOCK_TARGET_BYTES = 4 << 20

#: Frames of a leaf up to this size are joined into one array per block when
#: it is sealed; larger ones travel as views of their host copies.
SMALL_FRAME_BYTES = 16 << 10

#: What the batcher hands on: ``(group, start, count, buffers, nbytes)``, the
#: buffers as :func:`block_buffers` lays them out.
OnSealed = Callable[[int, int, int, list[np.ndarray], int], None]


def block_buffers(frames: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """The bytes of a block of ``frames`` in its layout: leaf by leaf, frame by frame.

    Frames of a leaf larger than :data:`SMALL_FRAME_BYTES` are returned as they
    are (views of the host copies, copied once, when sent); smaller ones are
    joined into one array per leaf. A block of thousands of scalar frames then
    holds a few objects until it is acknowledged rather than one per frame and
    leaf: objects that live that long make Python's full garbage collections
    -- which walk every object of the process, JAX's modules included, ~70 ms
    each -- more frequent; the scalar workload spent a third of its time in
    them (BENCHMARKS.md, item 24).
    """
    buffers: list[np.ndarray] = []
    for i in range(len(frames[0]) if frames else 0):
        column = [leaves[i] for leaves in frames]
        if len(column) > 1 and column[0].nbytes <= SMALL_FRAME_BYTES:
            buffers.append(np.array(column, dtype=column[0].dtype))
        else:
            buffers.extend(column)
    return buffers


@dataclass
class _Pending:
    """One group's frames gathered so far (consecutive from ``start``)."""

    start: int = 0
    frames: list[Sequence[np.ndarray]] = field(default_factory=list)
    nbytes: int = 0
    since: float = 0.0  # when its first frame came (time.monotonic)


class FrameBatcher:
    """Gathers each group's consecutive frames into blocks (see the module docstring).

    Args:
        spec: The run's schema (frame sizes and chunking per group).
        on_sealed: Called with every block sealed, in the order they are sealed.
    """

    def __init__(self, spec: RunSpec, on_sealed: OnSealed) -> None:
        self._on_sealed = on_sealed
        #: Frames per block, per group: whole chunks, about BLOCK_TARGET_BYTES.
        self.batch = [
            max(1, min(layout.batch_frames(g), BLOCK_TARGET_BYTES // max(g.frame_nbytes, 1)))
            for g in spec.groups
        ]
        #: Bytes of one frame, per group position (a dict: a position the run
        #: lacks, negative ones included, is missing rather than wrapped).
        self.frame_nbytes = {i: g.frame_nbytes for i, g in enumerate(spec.groups)}
        self._pending = [_Pending() for _ in spec.groups]

    def add(self, frames: Sequence[tuple[int, int, Sequence[np.ndarray]]]) -> None:
        """Add a step's frames, ``(group, index, leaves)`` each; seal the blocks that fill."""
        all_pending, batches, sizes = self._pending, self.batch, self.frame_nbytes
        for group, index, leaves in frames:
            pending = all_pending[group]
            if pending.frames and index != pending.start + len(pending.frames):
                self.seal(group)
                pending = all_pending[group]
            if not pending.frames:
                pending.start = index
                pending.since = time.monotonic()
            pending.frames.append(leaves)
            pending.nbytes += sizes[group]
            batch = batches[group]
            count = len(pending.frames)
            if count >= batch or (pending.start + count) % batch == 0:
                self.seal(group)

    def seal(self, group: int) -> None:
        """Hand on ``group``'s gathered frames as a block, if it has any."""
        pending = self._pending[group]
        if not pending.frames:
            return
        self._pending[group] = _Pending()
        buffers = block_buffers(pending.frames)
        self._on_sealed(group, pending.start, len(pending.frames), buffers, pending.nbytes)

    def seal_all(self, older_than: float | None = None) -> None:
        """Seal every group's frames (with ``older_than``: those gathered that many seconds ago)."""
        now = time.monotonic()
        for group, pending in enumerate(self._pending):
            if pending.frames and (older_than is None or now - pending.since >= older_than):
                self.seal(group)

    def oldest(self) -> float | None:
        """When the oldest frame still gathered came (``time.monotonic``); ``None``: none is."""
        oldest = [p.since for p in self._pending if p.frames]
        return min(oldest) if oldest else None

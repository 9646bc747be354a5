"""Reading ahead: the next piece is read on a thread of its own while the last is used.

A store's Read stream alternates between reading a piece from HDF5 (h5py
holds the GIL) and waiting for gRPC to send it (the GIL is free); a remote
``read_chunked`` alternates between fetching a chunk (waiting on the
network) and the caller's work on it. :func:`read_ahead` runs the reading
on a thread of its own, at most ``depth`` pieces ahead, so the two overlap;
memory stays bounded by ``depth`` pieces.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["read_ahead"]

T = TypeVar("T")


class _Pipe(Generic[T]):
    """Pieces handed from the reading thread to the sending one, ``depth`` at most."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.cond = threading.Condition()
        self.items: deque[T] = deque()
        self.finished = False  # the source is exhausted (or failed)
        self.error: BaseException | None = None
        self.cancelled = False  # the consumer left early

    def produce(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                with self.cond:
                    self.cond.wait_for(lambda: self.cancelled or len(self.items) < self.depth)
                    if self.cancelled:
                        return
                    self.items.append(item)
                    self.cond.notify_all()
        except BaseException as e:  # handed to the consumer, raised there
            with self.cond:
                self.error = e
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # runs the source's own clean-up on this thread
            with self.cond:
                self.finished = True
                self.cond.notify_all()


def read_ahead(source: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Yield the items of ``source``, produced on another thread ``depth`` ahead.

    An error in ``source`` is raised here, after the items before it. Closing
    this generator early stops the reading thread and waits for it.
    """
    pipe: _Pipe[T] = _Pipe(depth)
    thread = threading.Thread(
        target=pipe.produce, args=(source,), name="trajstore-read-ahead", daemon=True
    )
    thread.start()
    try:
        while True:
            with pipe.cond:
                pipe.cond.wait_for(lambda: bool(pipe.items) or pipe.finished)
                if not pipe.items:
                    if pipe.error is not None:
                        raise pipe.error
                    return
                item = pipe.items.popleft()
                pipe.cond.notify_all()
            yield item
    finally:
        with pipe.cond:
            pipe.cancelled = True
            pipe.cond.notify_all()
        thread.join()

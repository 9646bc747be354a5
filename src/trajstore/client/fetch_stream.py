"""Reads of a frame at a time over one long-lived FetchStream call.

A unary Fetch pays for setting up a call on every read; on one open stream a
request and its response are all that travel. Measured on loopback with
bare gRPC calls and a 120 KB reply: 0.44 ms per message on a stream against
0.76 ms per unary call (BENCHMARKS.md, item 18).

The stream is opened on first use and ended after ``idle_seconds`` without a
read, so that an idle reader does not hold one of the store's threads. A
typed error (a bad index, an unknown group) ends the call on the store and is
raised here; the next read opens a new call. When the stream cannot be used
-- another thread is using it, the store serves as many streams as it allows,
an older store does not know the method, the call broke -- :meth:`fetch`
returns ``None`` and the caller makes a unary Fetch instead.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from trajstore import wire
from trajstore.blockcodec import IncomingArrays, query_method
from trajstore.errors import UnavailableError
from trajstore.v1 import query_pb2 as qpb

__all__ = ["FetchStream"]

log = logging.getLogger("trajstore.client")

_END = None  # put in the request queue: the client half-closes the call

#: An open call: the queue its requests are taken from, and its responses.
_Call = tuple["queue.SimpleQueue[qpb.FetchStreamRequest | None]", Any]


class FetchStream:
    """One reader's FetchStream call: opened on demand, ended when idle.

    Args:
        channel: The channel to the store.
        metadata: Sent when the call opens (the bearer token).
        timeout: Seconds to wait for each response (``None``: no limit); a
            store that does not answer in time raises :class:`UnavailableError`.
        idle_seconds: End the call after this long without a read.
        retry_seconds: After the stream could not be used (no room on the
            store, an older store, a broken call), wait this long before
            trying it again.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        metadata: tuple[tuple[str, str], ...],
        *,
        timeout: float | None = None,
        idle_seconds: float = 2.0,
        retry_seconds: float = 10.0,
    ) -> None:
        self._method = query_method(channel, "FetchStream")
        self._metadata = metadata
        self.timeout = timeout
        self.idle_seconds = idle_seconds
        self.retry_seconds = retry_seconds
        self._cond = threading.Condition()
        self._busy = False  # a read is in flight (guarded by _cond)
        self._busy_since = 0.0
        self._timed_out = False  # the watchdog ended the call of the read in flight
        self._call: _Call | None = None
        self._last_used = 0.0
        self._retry_at = 0.0
        self._closed = False

    @property
    def is_open(self) -> bool:
        """Whether a call is open now."""
        with self._cond:
            return self._call is not None

    def fetch(self, read: qpb.ReadRequest) -> IncomingArrays[qpb.FetchStreamResponse] | None:
        """The response to ``read``; ``None``: the stream cannot be used now, make a Fetch.

        Raises:
            TrajstoreError: The subclass the store raised for this request.
        """
        with self._cond:
            if self._busy or self._closed or time.monotonic() < self._retry_at:
                return None
            self._busy, self._busy_since, self._timed_out = True, time.monotonic(), False
            if self._call is None:
                self._call = self._open()
            requests, responses = self._call
        try:
            requests.put(qpb.FetchStreamRequest(read=read))
            return next(responses)  # type: ignore[no-any-return]
        except grpc.RpcError as e:
            if self._timed_out:
                message = f"the store did not answer within {self.timeout} s"
                raise UnavailableError(message) from None
            typed = _names_an_error_class(e)
            self._end(retry_later=not typed)
            if typed:
                raise wire.error_from_rpc(e) from None
            log.debug("fetch stream unavailable (%s): using Fetch", e.code())
            return None
        except StopIteration:  # the store ended the call: it is stopping
            self._end(retry_later=True)
            return None
        finally:
            with self._cond:
                self._busy = False
                self._last_used = time.monotonic()

    def close(self) -> None:
        """End the call, if open; later reads make Fetch calls."""
        with self._cond:
            self._closed = True
        self._end(retry_later=False)

    # ------------------------------------------------------------------

    def _open(self) -> _Call:
        requests: queue.SimpleQueue[qpb.FetchStreamRequest | None] = queue.SimpleQueue()
        call = (requests, self._method(_drain(requests), metadata=self._metadata))
        self._last_used = time.monotonic()
        threading.Thread(
            target=self._end_when_idle, args=(call,), name="fetch-stream-idle", daemon=True
        ).start()
        return call

    def _end(self, *, retry_later: bool) -> None:
        """End the open call, if any."""
        with self._cond:
            call, self._call = self._call, None
            if retry_later:
                self._retry_at = time.monotonic() + self.retry_seconds
            self._cond.notify_all()
        if call is not None:
            _finish(call)

    def _end_when_idle(self, call: _Call) -> None:
        """The watchdog of ``call``: ends it when idle, or when a read waits too long.

        Idle: no read for ``idle_seconds``; too long: past ``timeout``. Reads
        do not wake it (a wake-up of this thread on every read cost a
        one-frame read ~5 %, BENCHMARKS.md item 22): it looks every quarter
        of ``timeout`` while idle and every quarter of ``idle_seconds`` while
        a read is in flight, so it acts at most that late. Returns at once
        when the call was ended elsewhere.
        """
        with self._cond:
            while self._call is call:
                now = time.monotonic()
                timeout = math.inf if self.timeout is None else self.timeout
                if self._busy:
                    if now - self._busy_since >= timeout:
                        self._timed_out = True
                        break
                    wait = min(self._busy_since + timeout - now, self.idle_seconds / 4)
                else:
                    if now - self._last_used >= self.idle_seconds:
                        break
                    wait = min(self._last_used + self.idle_seconds - now, timeout / 4)
                self._cond.wait(wait)
            else:
                return
            self._call = None  # under the lock: no read starts on it from here on
        _finish(call)


def _finish(call: _Call) -> None:
    requests, responses = call
    requests.put(_END)  # half-close...
    responses.cancel()  # ... and free the store's thread now


def _drain(requests: queue.SimpleQueue[qpb.FetchStreamRequest | None]) -> Iterator[Any]:
    """The requests of one call, until the end marker."""
    while (request := requests.get()) is not _END:
        yield request


def _names_an_error_class(error: grpc.RpcError) -> bool:
    """Whether the store raised a typed error (rather than the call failing or being refused)."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return any(key == wire.ERROR_CLASS_KEY for key, _ in trailing or ())

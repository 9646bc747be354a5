"""A writer's session on the store: OpenRun and CloseRun, and when to try opening again.

A run that cannot be opened *right now* is not always a dead end. The store
may be away (restarting, the network down: :class:`UnavailableError`), or
the run may be held for a moment (:class:`RunLockedError`: its last writer
still closing, a writer's own previous session still being released, a
second writer about to close). :func:`open_retrying` tries again with
exponential backoff for as long as its caller allows; the remote writer
reconnecting (:mod:`trajstore.client.sender`) and ``trajstore push`` use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential
from tenacity.stop import stop_base

from trajstore import wire
from trajstore.errors import RunLockedError, UnavailableError
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import ingest_pb2_grpc as pb_grpc

__all__ = [
    "RETRIABLE_OPEN_ERRORS",
    "Session",
    "close_session",
    "open_retrying",
    "open_session",
]

log = logging.getLogger("trajstore.client")

#: OpenRun errors worth trying again after a pause (see the module docstring).
RETRIABLE_OPEN_ERRORS: tuple[type[Exception], ...] = (UnavailableError, RunLockedError)


@dataclass(frozen=True)
class Session:
    """A writer session on the store, as OpenRun granted it."""

    id: str
    part_bytes: int
    lease_seconds: float
    frames: tuple[int, ...] = ()  # frames durable per group when it was opened


def open_session(
    stub: pb_grpc.IngestServiceStub,
    request: pb.OpenRunRequest,
    *,
    metadata: tuple[tuple[str, str], ...],
    timeout: float,
) -> Session:
    """Call OpenRun; the error the store raised comes back as the same class."""
    try:
        opened = stub.OpenRun(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as e:
        raise wire.error_from_rpc(e) from None
    return Session(
        opened.session,
        int(opened.max_message_bytes),
        opened.lease_seconds,
        tuple(int(n) for n in opened.frames),
    )


def close_session(
    stub: pb_grpc.IngestServiceStub,
    session: str,
    actual_steps: int | None,
    *,
    metadata: tuple[tuple[str, str], ...],
    timeout: float,
) -> None:
    """Call CloseRun, recording ``actual_steps`` (``None``: keep the run's); errors typed."""
    try:
        stub.CloseRun(
            pb.CloseRunRequest(session=session, actual_steps=actual_steps),
            timeout=timeout,
            metadata=metadata,
        )
    except grpc.RpcError as e:
        raise wire.error_from_rpc(e) from None


def open_retrying(
    open_once: Callable[[], Session],
    *,
    stop: stop_base,
    sleep: Callable[[float], None] = time.sleep,
    first_wait: float = 0.1,
    max_wait: float = 5.0,
) -> Session:
    """``open_once()``, tried again after each :data:`RETRIABLE_OPEN_ERRORS` until ``stop``.

    Args:
        open_once: One OpenRun.
        stop: When to give up (tenacity's stop conditions: a delay, an event).
        sleep: How to wait between attempts (one that ends early on close).
        first_wait: The first pause, doubled each attempt up to ``max_wait``.
        max_wait: The longest pause.

    Raises:
        UnavailableError, RunLockedError: The last attempt's error, once
            ``stop`` says to give up.
        TrajstoreError: Any other error, at once.
    """
    retrying = Retrying(
        wait=wait_exponential(multiplier=first_wait, max=max_wait),
        stop=stop,
        sleep=sleep,
        retry=retry_if_exception_type(RETRIABLE_OPEN_ERRORS),
        reraise=True,
        before_sleep=_log_retry,
    )
    return retrying(open_once)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    pause = state.next_action.sleep if state.next_action is not None else 0.0
    log.info("opening the run failed (%s); trying again in %.1f s", error, pause)

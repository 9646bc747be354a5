"""The gate every call passes: who may call what, how many at once, and for how long idle.

gRPC Python runs server interceptors on its polling thread, before a call
gets a thread, but whatever handler they return runs on a worker thread --
a refusal too, and a unary method's handler waits on that thread until the
client sends its request. So a refusal alone does not keep a caller from
taking capacity, and ``maximum_concurrent_rpcs`` counts refused and admitted
calls alike (idle no-token streams used to fill it and lock writers out).

The gate therefore decides everything on the polling thread and gives each
kind of call its own thread pool (gRPC's ``experimental_thread_pool``):

- **write**: ingest calls (OpenRun, Write, CloseRun; with tokens: of a write
  token). Reserved: no read or unauthenticated call can take these threads,
  so a writer always gets in while fewer than ``write_workers`` ingest calls
  are open (each writer holds one Write stream for its run).
- **read**: queries, server reflection and health ``Watch``; with tokens they
  need a token of either role. One client host (peer address without its
  port) may hold at most ``reads_per_peer`` of them (by default the whole
  share: one analysis host with many reader threads is a common client; a
  store shared by many analysts sets it lower so one host cannot take the
  share from the others).
- **health**: the health service's ``Check``, the one call answered without
  a token when tokens are configured (orchestrators probe without one);
  :data:`HEALTH_WORKERS` threads of its own.
- **refusals**: :data:`REFUSAL_WORKERS` threads that only send refusals
  (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED). A refusal is
  sent as soon as the call starts, without waiting for its request, so a
  flood of refused calls never holds a thread of the shares above.

A call beyond its share is refused at once with ``RESOURCE_EXHAUSTED``
(:class:`~trajstore.errors.ResourceExhaustedError`) naming the limit; it never
queues behind the calls holding the share.

Idle calls end. A call is idle while the server waits on its client: for a
request message (a unary call whose request never comes, a FetchStream or
reflection stream with no next request) or for the client to take a response
it was handed (a Read or Follow whose client stopped consuming: gRPC's flow
control then blocks the send). A call whose server side is working -- reading
a file, or a Follow waiting for new frames of a quiet live run -- is not
idle: its client's keepalive pings show the client is there, and it takes
each frame as it comes. A call idle for ``idle_seconds`` is ended with
``RESOURCE_EXHAUSTED`` ("idle ... ended"), which frees its thread. Ingest
calls are exempt: a simulation may log nothing for long stretches, its
threads are reserved for writers, and its session's lease bounds it.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from trajstore.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TrajstoreError,
    UnauthenticatedError,
)
from trajstore.server.auth import Role, Tokens, bearer, required_role
from trajstore.server.status import abort_with

__all__ = ["HEALTH_WORKERS", "REFUSAL_WORKERS", "Budget", "Gate", "Share", "share_of"]

log = logging.getLogger("trajstore.server")

#: Threads answering health checks (each check takes one for a moment).
HEALTH_WORKERS = 4
#: Threads sending refusals (each refusal takes one for a moment).
REFUSAL_WORKERS = 2


class Share(enum.Enum):
    """Which threads a call may use."""

    WRITE = "write"
    READ = "read"
    HEALTH = "health"


def share_of(method: str) -> Share:
    """The share a gRPC method's calls draw their threads from."""
    if method.startswith("/trajstore.v1.IngestService/"):
        return Share.WRITE
    if method == "/grpc.health.v1.Health/Check":
        return Share.HEALTH
    return Share.READ


@dataclass(frozen=True)
class Budget:
    """How many calls of each kind the store serves at once.

    Attributes:
        write_workers: Threads reserved for ingest calls.
        read_workers: Threads for queries, reflection and health Watch.
        reads_per_peer: Read-share calls one client host may have open.
        idle_seconds: A call waiting this long on its client is ended.
    """

    write_workers: int
    read_workers: int
    reads_per_peer: int
    idle_seconds: float


def peer_host(peer: str) -> str:
    """A gRPC peer string (``ipv4:10.0.0.7:51234``) without its port."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class _Watched:
    """One admitted call: since when it waits on its client (``None``: it does not)."""

    __slots__ = ("context", "since")

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.context = context
        self.since: float | None = None

    def waiting(self) -> None:
        self.since = time.monotonic()

    def busy(self) -> None:
        self.since = None


class IdleWatch:
    """Ends calls that waited on their client for ``idle_seconds``, from one thread."""

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self._calls: set[_Watched] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rpc-idle-watch", daemon=True)
        self._thread.start()

    def add(self, call: _Watched) -> None:
        with self._lock:
            self._calls.add(call)

    def discard(self, call: _Watched) -> None:
        with self._lock:
            self._calls.discard(call)

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = min(1.0, self.idle_seconds / 4)
        while not self._stop.wait(interval):
            now = time.monotonic()
            with self._lock:
                idle = [
                    c
                    for c in self._calls
                    if c.since is not None and now - c.since >= self.idle_seconds
                ]
                self._calls.difference_update(idle)
            for call in idle:
                _end(
                    call.context,
                    f"idle stream ended: waited {self.idle_seconds:g} s on the client "
                    f"(--idle-stream-seconds)",
                )


def _end(context: grpc.ServicerContext, details: str) -> None:
    """End a call from another thread with RESOURCE_EXHAUSTED and ``details``.

    ``ServicerContext.cancel`` would end it as CANCELLED, which the client
    cannot tell from its own cancellation; gRPC's call object takes a status.
    """
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        if call is not None:
            from grpc._cython import cygrpc

            call.cancel(cygrpc.StatusCode.resource_exhausted, details)
        else:
            context.cancel()
    except Exception:  # a call that just ended cannot be cancelled
        log.debug("ending an idle call failed", exc_info=True)


class _Requests:
    """A call's request iterator that marks the call as waiting while it waits."""

    def __init__(self, requests: Iterator[Any], call: _Watched) -> None:
        self._requests = requests
        self._call = call

    def __iter__(self) -> _Requests:
        return self

    def __next__(self) -> Any:
        self._call.waiting()
        try:
            return next(self._requests)
        finally:
            self._call.busy()


class _Responses:
    """A call's responses: the call waits on its client from hand-over until the next is asked.

    gRPC asks for the next response only once the previous one is sent, and
    a send waits while the client does not read (flow control).
    """

    def __init__(self, responses: Iterable[Any], call: _Watched, done: Callable[[], None]):
        self._responses = iter(responses)
        self._call = call
        self._done: Callable[[], None] | None = done

    def __iter__(self) -> _Responses:
        return self

    def __next__(self) -> Any:
        self._call.busy()
        try:
            response = next(self._responses)
        except BaseException:
            self._finish()
            raise
        self._call.waiting()
        return response

    def _finish(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done()

    def __del__(self) -> None:
        # gRPC drops the iterator without exhausting it when the call ends early.
        close = getattr(self._responses, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # pragma: no cover - a handler's cleanup failing
                log.exception("closing a response stream failed")
        self._finish()


_MAKE: dict[bool, Callable[..., grpc.RpcMethodHandler]] = {
    False: grpc.stream_unary_rpc_method_handler,
    True: grpc.stream_stream_rpc_method_handler,
}


class Gate(grpc.ServerInterceptor):  # type: ignore[misc]
    """Admits calls by token and by share, on gRPC's polling thread (see the module doc).

    Args:
        tokens: Accepted tokens (none: every call is allowed, shares still apply).
        budget: The shares' sizes and the idle limit.
    """

    def __init__(self, tokens: Tokens, budget: Budget) -> None:
        self.tokens = tokens
        self.budget = budget
        self.sizes = {
            Share.WRITE: budget.write_workers,
            Share.READ: budget.read_workers,
            Share.HEALTH: HEALTH_WORKERS,
        }
        self.pools = {
            share: futures.ThreadPoolExecutor(size, thread_name_prefix=f"rpc-{share.value}")
            for share, size in self.sizes.items()
        }
        self.refusals = futures.ThreadPoolExecutor(REFUSAL_WORKERS, thread_name_prefix="rpc-refuse")
        self.idle = IdleWatch(budget.idle_seconds)
        self._lock = threading.Lock()
        self._in_use: Counter[Share] = Counter()
        self._per_peer: Counter[str] = Counter()

    def close(self) -> None:
        """Stop the idle watch and let the pools' threads go once their calls end."""
        self.idle.close()
        for pool in (*self.pools.values(), self.refusals):
            pool.shutdown(wait=False)

    def in_use(self, share: Share) -> int:
        """Calls of ``share`` admitted and not yet finished."""
        with self._lock:
            return self._in_use[share]

    # ------------------------------------------------------------ admission

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Admit the call into its share, or answer it with a refusal."""
        handler = continuation(details)
        if handler is None:
            return None  # UNIMPLEMENTED, sent without a thread
        method = details.method
        if self.tokens:
            needed = required_role(method)
            if needed is not None:
                role = self.tokens.role_of(bearer(details.invocation_metadata))
                if role is None:
                    error: TrajstoreError = UnauthenticatedError("missing or wrong bearer token")
                    return self._refusal(handler, error)
                if needed is Role.WRITE and role is Role.READ:
                    return self._refusal(handler, PermissionDeniedError("this token may only read"))
        share = share_of(method)
        with self._lock:
            if self._in_use[share] >= self.sizes[share]:
                full = True
            else:
                full = False
                self._in_use[share] += 1
        if full:
            return self._refusal(
                handler,
                ResourceExhaustedError(
                    f"all {self.sizes[share]} threads of the store's {share.value} share are "
                    f"busy (--max-workers, --write-workers): try again later"
                ),
            )
        return self._admitted(handler, share, method)

    def _release(self, share: Share, peer: str | None) -> None:
        log.debug("call of the %s share (peer %s) done", share.value, peer)
        with self._lock:
            self._in_use[share] -= 1
            if peer is not None:
                self._per_peer[peer] -= 1
                if not self._per_peer[peer]:
                    del self._per_peer[peer]

    def _refusal(
        self, handler: grpc.RpcMethodHandler, error: TrajstoreError
    ) -> grpc.RpcMethodHandler:
        """A handler that refuses at once, on the refusal threads, without reading a request."""

        def refuse(_requests: object, context: grpc.ServicerContext) -> Any:
            abort_with(context, error)

        refuse.experimental_thread_pool = self.refusals  # type: ignore[attr-defined]
        return _MAKE[handler.response_streaming](
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _admitted(
        self, handler: grpc.RpcMethodHandler, share: Share, method: str
    ) -> grpc.RpcMethodHandler:
        """``handler`` on its share's threads, watched for idleness, releasing its slot when done.

        The returned handler always reads requests as a stream, so that a
        unary method's wait for its request is watched too.
        """
        behavior = (
            handler.stream_stream
            or handler.stream_unary
            or handler.unary_stream
            or handler.unary_unary
        )
        watched = share is not Share.WRITE

        def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            peer: str | None = None
            call = _Watched(context)
            released = threading.Lock()

            def done() -> None:
                if released.acquire(blocking=False):  # once, from whichever comes first
                    self.idle.discard(call)
                    self._release(share, peer)

            # Normally the slot is let go when the handler's thread is done with the
            # call; should gRPC drop a response iterator it never drains, the call's
            # end lets it go (at worst a moment early, never never).
            context.add_callback(done)
            try:
                if share is Share.READ:
                    peer = self._enter_peer(context)
                if watched:
                    self.idle.add(call)
                    requests = _Requests(requests, call)
                if handler.request_streaming:
                    argument: Any = requests
                else:
                    argument = next(requests, None)
                    if argument is None:
                        raise InvalidArgumentError(f"{method} takes one request message")
                if not handler.response_streaming:
                    try:
                        return behavior(argument, context)
                    finally:
                        done()
                return _Responses(behavior(argument, context), call, done)
            except TrajstoreError as e:
                done()
                abort_with(context, e)
            except BaseException:
                done()
                raise

        run.experimental_thread_pool = self.pools[share]  # type: ignore[attr-defined]
        return _MAKE[handler.response_streaming](
            run,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _enter_peer(self, context: grpc.ServicerContext) -> str:
        """Count a read-share call against its client host, or refuse it past the cap."""
        peer = peer_host(context.peer())
        cap = self.budget.reads_per_peer
        with self._lock:
            if self._per_peer[peer] >= cap:
                raise ResourceExhaustedError(
                    f"{peer} already has {cap} read calls open on this store "
                    f"(--max-reads-per-peer): end one first"
                )
            self._per_peer[peer] += 1
            log.debug("%s has %d read calls open", peer, self._per_peer[peer])
        return peer

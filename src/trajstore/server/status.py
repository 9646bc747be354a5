"""Errors raised in a handler, turned into gRPC statuses the client maps back to their class."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from trajstore import errors, wire

__all__ = ["abort_with", "typed_errors"]

log = logging.getLogger("trajstore.server")
R = TypeVar("R")


def abort_with(context: grpc.ServicerContext, error: BaseException) -> None:
    """End the call with ``error``'s status code; name its class for the client."""
    if isinstance(error, grpc.RpcError):  # reading the client's next message: it went away
        log.debug("call ended by its client: %r", error)
        error = errors.UnavailableError("the call was ended by the client")
    if not isinstance(error, errors.TrajstoreError):
        log.exception("unexpected error", exc_info=error)
        error = errors.StorageError(f"internal server error: {error!r}")
    trailing = [(wire.ERROR_CLASS_KEY, type(error).__name__)]
    fields = error.wire_fields()
    if fields:
        trailing.append((wire.ERROR_FIELDS_KEY, json.dumps(fields)))
    context.set_trailing_metadata(tuple(trailing))
    context.abort(wire.status_code(error), str(error))


def typed_errors(method: Callable[..., R]) -> Callable[..., R]:
    """Turn exceptions of a unary handler into gRPC statuses (see :func:`abort_with`)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return method(self, request, context)
        except Exception as e:
            abort_with(context, e)
            raise  # unreachable: abort raises

    return wrapper

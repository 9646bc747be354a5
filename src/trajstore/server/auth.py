"""Access control: bearer tokens with roles, checked on every call.

A ``write`` token may write and read; a ``read`` token may only read. The
health and reflection services are open to anyone (they reveal nothing
about the runs). Tokens come from a file or the environment, never from the
command line's process listing if avoidable.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from trajstore.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    TrajstoreError,
    UnauthenticatedError,
)
from trajstore.server.status import abort_with

__all__ = ["AuthInterceptor", "Role", "Tokens", "is_loopback", "required_role"]


class Role(enum.Enum):
    """What a token allows."""

    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class Tokens:
    """The tokens a server accepts, and the role of each."""

    roles: Mapping[str, Role]

    @classmethod
    def parse(cls, text: str, *, source: str = "tokens") -> Tokens:
        """Parse ``role:token`` entries separated by commas, spaces or lines ('#' comments)."""
        roles: dict[str, Role] = {}
        for raw_line in text.splitlines():
            line = raw_line.split("#", 1)[0]
            for entry in line.replace(",", " ").split():
                role, sep, token = entry.partition(":")
                if not sep or not token:
                    raise InvalidArgumentError(f"{source}: expected role:token, got {entry!r}")
                try:
                    roles[token] = Role(role.strip().lower())
                except ValueError:
                    raise InvalidArgumentError(
                        f"{source}: unknown role {role!r} (use read or write)"
                    ) from None
        return cls(roles)

    @classmethod
    def load(cls, path: str | Path | None = None, spec: str | None = None) -> Tokens:
        """Tokens from a file and/or an inline spec (e.g. ``TRAJSTORE_TOKENS``)."""
        roles: dict[str, Role] = {}
        if path:
            roles.update(cls.parse(Path(path).read_text(), source=str(path)).roles)
        if spec:
            roles.update(cls.parse(spec).roles)
        return cls(roles)

    def __bool__(self) -> bool:
        return bool(self.roles)

    def role_of(self, token: str | None) -> Role | None:
        """The role of ``token`` (compared in constant time), or ``None``."""
        if not token:
            return None
        found = None
        for known, role in self.roles.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = role
        return found


def required_role(method: str) -> Role | None:
    """The role a gRPC method needs (``None``: open to anyone)."""
    if method.startswith("/trajstore.v1.IngestService/"):
        return Role.WRITE
    if method.startswith("/trajstore.v1."):
        return Role.READ
    return None


def is_loopback(listen: str) -> bool:
    """Whether ``host:port`` binds only the loopback interface."""
    host = listen.rsplit(":", 1)[0].strip("[]").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def _bearer(metadata: Iterable[Any]) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return None


def _refusing(handler: grpc.RpcMethodHandler, error: TrajstoreError) -> grpc.RpcMethodHandler:
    def refuse(_request: object, context: grpc.ServicerContext) -> Any:
        abort_with(context, error)

    kinds: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without a token of the role their method needs."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """Pass the call on, or answer it with UNAUTHENTICATED / PERMISSION_DENIED."""
        handler = continuation(details)
        needed = required_role(details.method)
        if handler is None or needed is None:
            return handler
        role = self.tokens.role_of(_bearer(details.invocation_metadata))
        if role is None:
            return _refusing(handler, UnauthenticatedError("missing or wrong bearer token"))
        if needed is Role.WRITE and role is Role.READ:
            return _refusing(handler, PermissionDeniedError("this token may only read"))
        return handler

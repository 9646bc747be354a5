"""Access control: bearer tokens with roles, checked on every call.

A ``write`` token may write and read; a ``read`` token may only read. With
tokens configured, only the health service's ``Check`` answers without one
(orchestrators probe without credentials); server reflection and the health
``Watch`` stream need a token of either role, since every call that may stay
open takes capacity (see :mod:`trajstore.server.gate`, which applies these
rules). Tokens come from a file or the environment, never from the command
line's process listing if avoidable.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trajstore.errors import InvalidArgumentError

__all__ = ["Role", "Tokens", "bearer", "is_loopback", "required_role"]


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


#: The one method that answers without a token when tokens are configured.
OPEN_METHOD = "/grpc.health.v1.Health/Check"


def required_role(method: str) -> Role | None:
    """The role a gRPC method needs when tokens are configured (``None``: open to anyone)."""
    if method == OPEN_METHOD:
        return None
    if method.startswith("/trajstore.v1.IngestService/"):
        return Role.WRITE
    return Role.READ


def is_loopback(listen: str) -> bool:
    """Whether ``host:port`` binds only the loopback interface."""
    host = listen.rsplit(":", 1)[0].strip("[]").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def bearer(metadata: Iterable[Any]) -> str | None:
    """The bearer token in a call's metadata, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return None

"""Pytree classes the tests store (importable, so readers can rebuild them)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Particles:
    pos: Any
    vel: Any
    energy: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Tagged:
    value: Any
    label: str = dataclasses.field(metadata={"static": True}, default="x")


class Pair(NamedTuple):
    first: Any
    second: Any

"""Checking a declared schema against the server's limits, before anything is created."""

from __future__ import annotations

import json
import math

from trajstore.errors import ResourceExhaustedError, SchemaError
from trajstore.schema import RunSpec
from trajstore.server.config import Limits

__all__ = ["check_schema"]


def _check_name(name: str, what: str) -> None:
    if "/" in name or "\x00" in name or name in (".", ".."):
        raise SchemaError(f"{what} {name!r} is not a valid HDF5 name")


def check_schema(spec: RunSpec, limits: Limits) -> None:
    """Raise unless ``spec`` is well formed and within ``limits``.

    Raises:
        SchemaError: Malformed names.
        ResourceExhaustedError: More groups, leaves, dimensions, frame bytes
            or description bytes than the limits allow.
    """
    if not spec.groups:
        raise SchemaError("a run needs at least one group")
    if len(spec.groups) > limits.max_groups:
        raise ResourceExhaustedError(
            f"{len(spec.groups)} groups; this server allows {limits.max_groups}"
        )
    description_bytes = len(spec.metadata_json) + len(json.dumps(spec.config_structure))
    for group in spec.groups:
        if not group.name.startswith("group"):
            raise SchemaError(f"group name {group.name!r} must start with 'group'")
        _check_name(group.name, "group name")
        if len(group.leaves) > limits.max_leaves:
            raise ResourceExhaustedError(
                f"{group.name}: {len(group.leaves)} leaves; this server allows {limits.max_leaves}"
            )
        frame_bytes = 0
        for leaf in group.leaves:
            _check_name(leaf.dataset_name, "leaf")
            dims = len(leaf.shape) + bool(group.time_axis)  # as stored: with the time axis
            if dims > limits.max_dims:
                raise ResourceExhaustedError(
                    f"{group.name} leaf {leaf.path}: {dims} dimensions as stored; "
                    f"this server allows {limits.max_dims}"
                )
            frame_bytes += math.prod(leaf.shape) * leaf.np_dtype.itemsize
            if frame_bytes > limits.max_frame_bytes:
                raise ResourceExhaustedError(
                    f"{group.name}: a frame of more than {limits.max_frame_bytes} bytes"
                )
        description_bytes += len(json.dumps(group.structure)) + len(json.dumps(group.frequency))
        if description_bytes > limits.max_schema_json_bytes:
            raise ResourceExhaustedError(
                f"structure descriptions and metadata exceed {limits.max_schema_json_bytes} bytes"
            )

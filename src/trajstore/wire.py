"""The wire: specs to and from protobuf, errors to and from gRPC status codes.

Shared by the client and the server; imports neither JAX nor the HDF5 core.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from typing import Any

import grpc

from trajstore import bounds, errors
from trajstore.compression import Compression
from trajstore.schema import GroupSpec, LeafSpec, RunSpec, structure_leaves
from trajstore.v1 import ingest_pb2 as pb
from trajstore.v1 import query_pb2 as qpb

__all__ = [
    "ERROR_CLASS_KEY",
    "ERROR_FIELDS_KEY",
    "MAX_INDEX_COMPONENTS",
    "MODES",
    "error_from_rpc",
    "index_from_proto",
    "index_to_proto",
    "mode_from_proto",
    "schema_from_proto",
    "schema_to_proto",
    "status_code",
]

#: Trailing-metadata key naming the TrajstoreError subclass the server raised.
ERROR_CLASS_KEY = "trajstore-error-class"
#: Trailing-metadata key of the error's integer fields (``wire_fields``), as JSON.
ERROR_FIELDS_KEY = "trajstore-error-fields"

#: More components than numpy allows dimensions is never a valid index; refused before decoding.
MAX_INDEX_COMPONENTS = 64

MODES = {
    "create": pb.OPEN_MODE_CREATE,
    "overwrite": pb.OPEN_MODE_OVERWRITE,
    "append": pb.OPEN_MODE_APPEND,
}
_MODE_NAMES: dict[int, str] = {int(v): k for k, v in MODES.items()}
_MODE_NAMES[pb.OPEN_MODE_UNSPECIFIED] = "create"

_CODECS = {"zstd": pb.CODEC_ZSTD, "gzip": pb.CODEC_GZIP, "lzf": pb.CODEC_LZF}
_CODEC_NAMES = {v: k for k, v in _CODECS.items()}


def mode_from_proto(mode: int) -> str:
    """Open mode name of a proto ``OpenMode``; :class:`InvalidArgumentError` if unknown."""
    try:
        return _MODE_NAMES[mode]
    except KeyError:
        raise errors.InvalidArgumentError(f"unknown open mode {mode}") from None


def _compression_to_proto(compression: Compression | None) -> pb.Compression:
    if compression is None:
        return pb.Compression(codec=pb.CODEC_NONE)
    return pb.Compression(
        codec=_CODECS[compression.codec],
        level=compression.level,
        shuffle=compression.shuffle,
        target_chunk_bytes=compression.target_chunk_bytes,
    )


def _compression_from_proto(message: pb.Compression) -> Compression | None:
    if message.codec in (pb.CODEC_NONE, pb.CODEC_UNSPECIFIED):
        return None
    if message.codec not in _CODEC_NAMES:
        raise errors.SchemaError(f"unknown codec {message.codec}")
    try:
        return Compression(
            codec=_CODEC_NAMES[message.codec],  # type: ignore[arg-type]
            level=message.level,
            shuffle=message.shuffle,
            target_chunk_bytes=message.target_chunk_bytes,
        )
    except ValueError as e:
        raise errors.SchemaError(f"bad compression: {e}") from None


def schema_to_proto(spec: RunSpec) -> pb.RunSchema:
    """Describe ``spec`` for the wire."""
    message = pb.RunSchema(
        groups=[
            pb.GroupSchema(
                name=g.name,
                time_axis=g.time_axis,
                leaves=[
                    pb.LeafSchema(
                        path=leaf.path, dtype=leaf.dtype, shape=list(leaf.shape), units=leaf.units
                    )
                    for leaf in g.leaves
                ],
                structure_json=json.dumps(g.structure),
                frequency_json=json.dumps(g.frequency),
                compression=_compression_to_proto(g.compression),
            )
            for g in spec.groups
        ],
        config_structure_json=json.dumps(spec.config_structure),
        metadata_json=spec.metadata_json,
    )
    if spec.total_steps is not None:
        message.total_steps = spec.total_steps
    return message


def _json_object(text: str, what: str, *, default: Any) -> Any:
    if not text:
        return default
    return bounds.loads_json(text, what)  # as deep as a run file's reader allows


def schema_from_proto(message: pb.RunSchema) -> RunSpec:
    """Rebuild a :class:`RunSpec`, validating what the spec classes validate."""
    try:
        groups = tuple(
            GroupSpec(
                name=g.name,
                time_axis=g.time_axis,
                leaves=tuple(
                    LeafSpec(leaf.path, leaf.dtype, tuple(leaf.shape), leaf.units)
                    for leaf in g.leaves
                ),
                structure=_json_object(g.structure_json, "structure", default={}),
                frequency=_json_object(g.frequency_json, "frequency", default={}),
                compression=_compression_from_proto(g.compression),
            )
            for g in message.groups
        )
        for group in groups:
            if group.structure and structure_leaves(group.structure) != len(group.leaves):
                raise errors.SchemaError(f"{group.name}: structure and leaves disagree")
        metadata = message.metadata_json or "{}"
        if not isinstance(_json_object(metadata, "metadata", default={}), dict):
            raise errors.SchemaError("metadata must be a JSON object")
        return RunSpec(
            groups=groups,
            config_structure=_json_object(message.config_structure_json, "config", default={}),
            metadata_json=metadata,
            total_steps=message.total_steps if message.HasField("total_steps") else None,
        )
    except errors.TrajstoreError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise errors.SchemaError(f"invalid schema: {e}") from None


def metadata_from_json(text: str) -> dict[str, Any]:
    """User metadata from its JSON form (``{}`` if empty or not an object)."""
    value = bounds.loads_json(text, "metadata") if text else {}
    return value if isinstance(value, dict) else {}


def _as_int(value: object) -> int:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise errors.FrameIndexError(
            f"only integers, slices (`:`) and ellipsis (`...`) are valid indices, "
            f"got {type(value).__name__}"
        ) from None


def index_to_proto(index: object) -> tuple[list[qpb.IndexComponent], bool]:
    """Encode a numpy basic index: ``(components, was_a_tuple)``.

    Raises:
        FrameIndexError: For anything but ints, slices of ints and ``...``,
            as a local read would.
    """
    is_tuple = isinstance(index, tuple)
    components = []
    for part in index if isinstance(index, tuple) else (index,):
        if part is Ellipsis:
            components.append(qpb.IndexComponent(ellipsis=True))
        elif isinstance(part, slice):
            piece = qpb.Slice()
            for name in ("start", "stop", "step"):
                value = getattr(part, name)
                if value is not None:
                    try:
                        setattr(piece, name, operator.index(value))
                    except TypeError:
                        raise errors.FrameIndexError(
                            f"slice indices must be integers or None, got {part!r}"
                        ) from None
            components.append(qpb.IndexComponent(slice=piece))
        elif isinstance(part, bool) or part is None:
            raise errors.FrameIndexError(f"unsupported index {part!r}: basic indexing only")
        else:
            components.append(qpb.IndexComponent(integer=_as_int(part)))
    return components, is_tuple


def index_from_proto(components: Sequence[qpb.IndexComponent], is_tuple: bool) -> object:
    """Decode what :func:`index_to_proto` encoded."""
    if len(components) > MAX_INDEX_COMPONENTS:  # as the local reader: too many indices
        raise errors.FrameIndexError(
            f"an index has at most {MAX_INDEX_COMPONENTS} components, not {len(components)}"
        )
    parts: list[object] = []
    for component in components:
        kind = component.WhichOneof("kind")
        if kind == "integer":
            parts.append(component.integer)
        elif kind == "ellipsis":
            parts.append(Ellipsis)
        elif kind == "slice":
            s = component.slice
            parts.append(
                slice(
                    s.start if s.HasField("start") else None,
                    s.stop if s.HasField("stop") else None,
                    s.step if s.HasField("step") else None,
                )
            )
        else:
            raise errors.InvalidArgumentError("an index component must be set")
    if is_tuple:
        return tuple(parts)
    if len(parts) != 1:
        raise errors.InvalidArgumentError("a non-tuple index has exactly one component")
    return parts[0]


_STATUS = {name: getattr(grpc.StatusCode, name) for name in dir(grpc.StatusCode) if name.isupper()}


def status_code(error: errors.TrajstoreError) -> grpc.StatusCode:
    """The gRPC status code ``error`` travels as."""
    return _STATUS.get(error.status, grpc.StatusCode.UNKNOWN)


_DEFAULT_CLASS = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPreconditionError,
    grpc.StatusCode.OUT_OF_RANGE: errors.FrameIndexError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: errors.UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: errors.UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.UnavailableError,
    grpc.StatusCode.INTERNAL: errors.StorageError,
}


def error_from_rpc(error: grpc.RpcError) -> errors.TrajstoreError:
    """The :class:`~trajstore.TrajstoreError` a failed call stands for.

    The server names the class it raised in trailing metadata; that name is
    looked up among trajstore's own error classes (never imported). Without
    it, the status code picks a class.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(code)
    cls: type[errors.TrajstoreError] | None = None
    fields: dict[str, int] = {}
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_CLASS_KEY:
            cls = errors.error_class_for(str(value))
        elif key == ERROR_FIELDS_KEY:
            fields = _error_fields(value)
    if cls is None or cls.status != getattr(code, "name", None):
        cls = _DEFAULT_CLASS.get(code, errors.TrajstoreError)
    return cls.from_wire(details, fields)


def _error_fields(value: str | bytes) -> dict[str, int]:
    """An error's integer fields from trailing metadata; whatever is not one is dropped."""
    try:
        decoded = json.loads(value)
    except (ValueError, TypeError):
        return {}
    if not isinstance(decoded, dict):
        return {}
    return {str(k): v for k, v in decoded.items() if isinstance(v, int) and not isinstance(v, bool)}

from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OpenMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPEN_MODE_UNSPECIFIED: _ClassVar[OpenMode]
    OPEN_MODE_CREATE: _ClassVar[OpenMode]
    OPEN_MODE_OVERWRITE: _ClassVar[OpenMode]
    OPEN_MODE_APPEND: _ClassVar[OpenMode]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_UNSPECIFIED: _ClassVar[Codec]
    CODEC_NONE: _ClassVar[Codec]
    CODEC_ZSTD: _ClassVar[Codec]
    CODEC_GZIP: _ClassVar[Codec]
    CODEC_LZF: _ClassVar[Codec]
OPEN_MODE_UNSPECIFIED: OpenMode
OPEN_MODE_CREATE: OpenMode
OPEN_MODE_OVERWRITE: OpenMode
OPEN_MODE_APPEND: OpenMode
CODEC_UNSPECIFIED: Codec
CODEC_NONE: Codec
CODEC_ZSTD: Codec
CODEC_GZIP: Codec
CODEC_LZF: Codec

class Compression(_message.Message):
    __slots__ = ("codec", "level", "shuffle", "target_chunk_bytes")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    TARGET_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    codec: Codec
    level: int
    shuffle: bool
    target_chunk_bytes: int
    def __init__(self, codec: _Optional[_Union[Codec, str]] = ..., level: _Optional[int] = ..., shuffle: _Optional[bool] = ..., target_chunk_bytes: _Optional[int] = ...) -> None: ...

class LeafSchema(_message.Message):
    __slots__ = ("path", "dtype", "shape", "units")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    path: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    units: str
    def __init__(self, path: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., units: _Optional[str] = ...) -> None: ...

class GroupSchema(_message.Message):
    __slots__ = ("name", "time_axis", "leaves", "structure_json", "frequency_json", "compression")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIME_AXIS_FIELD_NUMBER: _ClassVar[int]
    LEAVES_FIELD_NUMBER: _ClassVar[int]
    STRUCTURE_JSON_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_JSON_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    time_axis: bool
    leaves: _containers.RepeatedCompositeFieldContainer[LeafSchema]
    structure_json: str
    frequency_json: str
    compression: Compression
    def __init__(self, name: _Optional[str] = ..., time_axis: _Optional[bool] = ..., leaves: _Optional[_Iterable[_Union[LeafSchema, _Mapping]]] = ..., structure_json: _Optional[str] = ..., frequency_json: _Optional[str] = ..., compression: _Optional[_Union[Compression, _Mapping]] = ...) -> None: ...

class RunSchema(_message.Message):
    __slots__ = ("groups", "config_structure_json", "metadata_json", "total_steps")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_STRUCTURE_JSON_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[GroupSchema]
    config_structure_json: str
    metadata_json: str
    total_steps: int
    def __init__(self, groups: _Optional[_Iterable[_Union[GroupSchema, _Mapping]]] = ..., config_structure_json: _Optional[str] = ..., metadata_json: _Optional[str] = ..., total_steps: _Optional[int] = ...) -> None: ...

class OpenRunRequest(_message.Message):
    __slots__ = ("run", "mode", "schema", "takeover_session")
    RUN_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TAKEOVER_SESSION_FIELD_NUMBER: _ClassVar[int]
    run: str
    mode: OpenMode
    schema: RunSchema
    takeover_session: str
    def __init__(self, run: _Optional[str] = ..., mode: _Optional[_Union[OpenMode, str]] = ..., schema: _Optional[_Union[RunSchema, _Mapping]] = ..., takeover_session: _Optional[str] = ...) -> None: ...

class OpenRunResponse(_message.Message):
    __slots__ = ("session", "frames", "actual_steps", "max_message_bytes", "lease_seconds")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session: str
    frames: _containers.RepeatedScalarFieldContainer[int]
    actual_steps: int
    max_message_bytes: int
    lease_seconds: float
    def __init__(self, session: _Optional[str] = ..., frames: _Optional[_Iterable[int]] = ..., actual_steps: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., lease_seconds: _Optional[float] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("session", "block", "group", "start", "count", "total_bytes", "offset", "data", "actual_steps", "flush", "close")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    session: str
    block: int
    group: int
    start: int
    count: int
    total_bytes: int
    offset: int
    data: bytes
    actual_steps: int
    flush: bool
    close: bool
    def __init__(self, session: _Optional[str] = ..., block: _Optional[int] = ..., group: _Optional[int] = ..., start: _Optional[int] = ..., count: _Optional[int] = ..., total_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., actual_steps: _Optional[int] = ..., flush: _Optional[bool] = ..., close: _Optional[bool] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("durable_block", "durable_frames", "closed", "actual_steps")
    DURABLE_BLOCK_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    durable_block: int
    durable_frames: _containers.RepeatedScalarFieldContainer[int]
    closed: bool
    actual_steps: int
    def __init__(self, durable_block: _Optional[int] = ..., durable_frames: _Optional[_Iterable[int]] = ..., closed: _Optional[bool] = ..., actual_steps: _Optional[int] = ...) -> None: ...

class CloseRunRequest(_message.Message):
    __slots__ = ("session", "actual_steps")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    session: str
    actual_steps: int
    def __init__(self, session: _Optional[str] = ..., actual_steps: _Optional[int] = ...) -> None: ...

class CloseRunResponse(_message.Message):
    __slots__ = ("frames", "actual_steps")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedScalarFieldContainer[int]
    actual_steps: int
    def __init__(self, frames: _Optional[_Iterable[int]] = ..., actual_steps: _Optional[int] = ...) -> None: ...

from trajstore.v1 import ingest_pb2 as _ingest_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_OPEN: _ClassVar[RunState]
    RUN_STATE_CLOSED: _ClassVar[RunState]
    RUN_STATE_DAMAGED: _ClassVar[RunState]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_OPEN: RunState
RUN_STATE_CLOSED: RunState
RUN_STATE_DAMAGED: RunState

class GroupStatus(_message.Message):
    __slots__ = ("name", "frames")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    frames: int
    def __init__(self, name: _Optional[str] = ..., frames: _Optional[int] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("name", "state", "groups", "size_bytes", "metadata_json", "created_unix", "updated_unix", "actual_steps", "problem", "generation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: RunState
    groups: _containers.RepeatedCompositeFieldContainer[GroupStatus]
    size_bytes: int
    metadata_json: str
    created_unix: float
    updated_unix: float
    actual_steps: int
    problem: str
    generation: int
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., groups: _Optional[_Iterable[_Union[GroupStatus, _Mapping]]] = ..., size_bytes: _Optional[int] = ..., metadata_json: _Optional[str] = ..., created_unix: _Optional[float] = ..., updated_unix: _Optional[float] = ..., actual_steps: _Optional[int] = ..., problem: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("prefix", "page_size", "page_token")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    page_size: int
    page_token: str
    def __init__(self, prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunInfo]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[RunInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DescribeRunRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class DescribeRunResponse(_message.Message):
    __slots__ = ("info", "schema")
    INFO_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    info: RunInfo
    schema: _ingest_pb2.RunSchema
    def __init__(self, info: _Optional[_Union[RunInfo, _Mapping]] = ..., schema: _Optional[_Union[_ingest_pb2.RunSchema, _Mapping]] = ...) -> None: ...

class Slice(_message.Message):
    __slots__ = ("start", "stop", "step")
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    start: int
    stop: int
    step: int
    def __init__(self, start: _Optional[int] = ..., stop: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class IndexComponent(_message.Message):
    __slots__ = ("integer", "slice", "ellipsis")
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    ELLIPSIS_FIELD_NUMBER: _ClassVar[int]
    integer: int
    slice: Slice
    ellipsis: bool
    def __init__(self, integer: _Optional[int] = ..., slice: _Optional[_Union[Slice, _Mapping]] = ..., ellipsis: _Optional[bool] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("run", "group", "leaves", "index", "index_is_tuple", "generation")
    RUN_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LEAVES_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INDEX_IS_TUPLE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    run: str
    group: str
    leaves: _containers.RepeatedScalarFieldContainer[int]
    index: _containers.RepeatedCompositeFieldContainer[IndexComponent]
    index_is_tuple: bool
    generation: int
    def __init__(self, run: _Optional[str] = ..., group: _Optional[str] = ..., leaves: _Optional[_Iterable[int]] = ..., index: _Optional[_Iterable[_Union[IndexComponent, _Mapping]]] = ..., index_is_tuple: _Optional[bool] = ..., generation: _Optional[int] = ...) -> None: ...

class LeafResult(_message.Message):
    __slots__ = ("shape", "scalar")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SCALAR_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    scalar: bool
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., scalar: _Optional[bool] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("results", "leaf", "offset", "data")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    LEAF_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[LeafResult]
    leaf: int
    offset: int
    data: bytes
    def __init__(self, results: _Optional[_Iterable[_Union[LeafResult, _Mapping]]] = ..., leaf: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("read",)
    READ_FIELD_NUMBER: _ClassVar[int]
    read: ReadRequest
    def __init__(self, read: _Optional[_Union[ReadRequest, _Mapping]] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("results", "data")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[LeafResult]
    data: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, results: _Optional[_Iterable[_Union[LeafResult, _Mapping]]] = ..., data: _Optional[_Iterable[bytes]] = ...) -> None: ...

class FetchStreamRequest(_message.Message):
    __slots__ = ("read",)
    READ_FIELD_NUMBER: _ClassVar[int]
    read: ReadRequest
    def __init__(self, read: _Optional[_Union[ReadRequest, _Mapping]] = ...) -> None: ...

class FetchStreamResponse(_message.Message):
    __slots__ = ("results", "data")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[LeafResult]
    data: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, results: _Optional[_Iterable[_Union[LeafResult, _Mapping]]] = ..., data: _Optional[_Iterable[bytes]] = ...) -> None: ...

class FollowRequest(_message.Message):
    __slots__ = ("run", "group", "leaves", "start", "generation")
    RUN_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LEAVES_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    run: str
    group: str
    leaves: _containers.RepeatedScalarFieldContainer[int]
    start: int
    generation: int
    def __init__(self, run: _Optional[str] = ..., group: _Optional[str] = ..., leaves: _Optional[_Iterable[int]] = ..., start: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class FollowResponse(_message.Message):
    __slots__ = ("start", "count", "leaf", "offset", "data", "total_bytes")
    START_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LEAF_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    start: int
    count: int
    leaf: int
    offset: int
    data: bytes
    total_bytes: int
    def __init__(self, start: _Optional[int] = ..., count: _Optional[int] = ..., leaf: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...

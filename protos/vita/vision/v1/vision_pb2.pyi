from vita.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncodeImageRequest(_message.Message):
    __slots__ = ("ctx", "image", "max_tiles")
    CTX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_TILES_FIELD_NUMBER: _ClassVar[int]
    ctx: _common_pb2.CallContext
    image: _common_pb2.MediaBlob
    max_tiles: int
    def __init__(self, ctx: _Optional[_Union[_common_pb2.CallContext, _Mapping]] = ..., image: _Optional[_Union[_common_pb2.MediaBlob, _Mapping]] = ..., max_tiles: _Optional[int] = ...) -> None: ...

class EncodeVideoRequest(_message.Message):
    __slots__ = ("ctx", "video")
    CTX_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    ctx: _common_pb2.CallContext
    video: _common_pb2.MediaBlob
    def __init__(self, ctx: _Optional[_Union[_common_pb2.CallContext, _Mapping]] = ..., video: _Optional[_Union[_common_pb2.MediaBlob, _Mapping]] = ...) -> None: ...

class CameraFrame(_message.Message):
    __slots__ = ("timestamp_ms", "jpeg")
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    JPEG_FIELD_NUMBER: _ClassVar[int]
    timestamp_ms: int
    jpeg: bytes
    def __init__(self, timestamp_ms: _Optional[int] = ..., jpeg: _Optional[bytes] = ...) -> None: ...

class EncodeFramesRequest(_message.Message):
    __slots__ = ("ctx", "frames")
    CTX_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ctx: _common_pb2.CallContext
    frames: _containers.RepeatedCompositeFieldContainer[CameraFrame]
    def __init__(self, ctx: _Optional[_Union[_common_pb2.CallContext, _Mapping]] = ..., frames: _Optional[_Iterable[_Union[CameraFrame, _Mapping]]] = ...) -> None: ...

class EmbeddingChunk(_message.Message):
    __slots__ = ("index", "total", "embeddings", "timestamp_ms", "timings")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    index: int
    total: int
    embeddings: _common_pb2.Tensor
    timestamp_ms: int
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, index: _Optional[int] = ..., total: _Optional[int] = ..., embeddings: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., timestamp_ms: _Optional[int] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("tokens_per_tile", "hidden_size", "weights")
    TOKENS_PER_TILE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    tokens_per_tile: int
    hidden_size: int
    weights: _common_pb2.WeightsInfo
    def __init__(self, tokens_per_tile: _Optional[int] = ..., hidden_size: _Optional[int] = ..., weights: _Optional[_Union[_common_pb2.WeightsInfo, _Mapping]] = ...) -> None: ...

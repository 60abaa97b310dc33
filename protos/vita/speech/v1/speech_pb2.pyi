from vita.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SegmentFinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEGMENT_FINISH_REASON_UNSPECIFIED: _ClassVar[SegmentFinishReason]
    SEGMENT_FINISH_REASON_EOS: _ClassVar[SegmentFinishReason]
    SEGMENT_FINISH_REASON_LENGTH_CAP: _ClassVar[SegmentFinishReason]
    SEGMENT_FINISH_REASON_EMPTY: _ClassVar[SegmentFinishReason]

class SynthesisEndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYNTHESIS_END_REASON_UNSPECIFIED: _ClassVar[SynthesisEndReason]
    SYNTHESIS_END_REASON_COMPLETED: _ClassVar[SynthesisEndReason]
    SYNTHESIS_END_REASON_CANCELLED: _ClassVar[SynthesisEndReason]
SEGMENT_FINISH_REASON_UNSPECIFIED: SegmentFinishReason
SEGMENT_FINISH_REASON_EOS: SegmentFinishReason
SEGMENT_FINISH_REASON_LENGTH_CAP: SegmentFinishReason
SEGMENT_FINISH_REASON_EMPTY: SegmentFinishReason
SYNTHESIS_END_REASON_UNSPECIFIED: SynthesisEndReason
SYNTHESIS_END_REASON_COMPLETED: SynthesisEndReason
SYNTHESIS_END_REASON_CANCELLED: SynthesisEndReason

class SynthesisStart(_message.Message):
    __slots__ = ("ctx",)
    CTX_FIELD_NUMBER: _ClassVar[int]
    ctx: _common_pb2.CallContext
    def __init__(self, ctx: _Optional[_Union[_common_pb2.CallContext, _Mapping]] = ...) -> None: ...

class TextSegment(_message.Message):
    __slots__ = ("index", "text")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class ListenerPosition(_message.Message):
    __slots__ = ("played_ms",)
    PLAYED_MS_FIELD_NUMBER: _ClassVar[int]
    played_ms: int
    def __init__(self, played_ms: _Optional[int] = ...) -> None: ...

class SynthesizeRequest(_message.Message):
    __slots__ = ("start", "segment", "position")
    START_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    start: SynthesisStart
    segment: TextSegment
    position: ListenerPosition
    def __init__(self, start: _Optional[_Union[SynthesisStart, _Mapping]] = ..., segment: _Optional[_Union[TextSegment, _Mapping]] = ..., position: _Optional[_Union[ListenerPosition, _Mapping]] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("pcm", "sample_rate_hz", "segment_index")
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    sample_rate_hz: int
    segment_index: int
    def __init__(self, pcm: _Optional[bytes] = ..., sample_rate_hz: _Optional[int] = ..., segment_index: _Optional[int] = ...) -> None: ...

class SegmentDone(_message.Message):
    __slots__ = ("segment_index", "codec_tokens", "finish_reason", "text_tokens", "timings")
    SEGMENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    CODEC_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    segment_index: int
    codec_tokens: int
    finish_reason: SegmentFinishReason
    text_tokens: int
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, segment_index: _Optional[int] = ..., codec_tokens: _Optional[int] = ..., finish_reason: _Optional[_Union[SegmentFinishReason, str]] = ..., text_tokens: _Optional[int] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class SynthesisDone(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: SynthesisEndReason
    def __init__(self, reason: _Optional[_Union[SynthesisEndReason, str]] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("audio", "segment_done", "done")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_DONE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    audio: AudioChunk
    segment_done: SegmentDone
    done: SynthesisDone
    def __init__(self, audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., segment_done: _Optional[_Union[SegmentDone, _Mapping]] = ..., done: _Optional[_Union[SynthesisDone, _Mapping]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("sample_rate_hz", "samples_per_token", "weights")
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    sample_rate_hz: int
    samples_per_token: int
    weights: _common_pb2.WeightsInfo
    def __init__(self, sample_rate_hz: _Optional[int] = ..., samples_per_token: _Optional[int] = ..., weights: _Optional[_Union[_common_pb2.WeightsInfo, _Mapping]] = ...) -> None: ...

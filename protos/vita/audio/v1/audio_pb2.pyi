from vita.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SampleEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLE_ENCODING_UNSPECIFIED: _ClassVar[SampleEncoding]
    SAMPLE_ENCODING_PCM16: _ClassVar[SampleEncoding]
    SAMPLE_ENCODING_F32: _ClassVar[SampleEncoding]

class DropReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DROP_REASON_UNSPECIFIED: _ClassVar[DropReason]
    DROP_REASON_TOO_SHORT: _ClassVar[DropReason]
    DROP_REASON_TOO_LONG: _ClassVar[DropReason]
    DROP_REASON_EMPTY: _ClassVar[DropReason]
    DROP_REASON_CANCELLED: _ClassVar[DropReason]
SAMPLE_ENCODING_UNSPECIFIED: SampleEncoding
SAMPLE_ENCODING_PCM16: SampleEncoding
SAMPLE_ENCODING_F32: SampleEncoding
DROP_REASON_UNSPECIFIED: DropReason
DROP_REASON_TOO_SHORT: DropReason
DROP_REASON_TOO_LONG: DropReason
DROP_REASON_EMPTY: DropReason
DROP_REASON_CANCELLED: DropReason

class VadConfig(_message.Message):
    __slots__ = ("enabled", "start_threshold", "end_threshold", "min_silence_ms", "pre_roll_ms", "min_utterance_ms", "max_utterance_ms")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    START_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    END_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_SILENCE_MS_FIELD_NUMBER: _ClassVar[int]
    PRE_ROLL_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_UTTERANCE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_UTTERANCE_MS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    start_threshold: float
    end_threshold: float
    min_silence_ms: int
    pre_roll_ms: int
    min_utterance_ms: int
    max_utterance_ms: int
    def __init__(self, enabled: _Optional[bool] = ..., start_threshold: _Optional[float] = ..., end_threshold: _Optional[float] = ..., min_silence_ms: _Optional[int] = ..., pre_roll_ms: _Optional[int] = ..., min_utterance_ms: _Optional[int] = ..., max_utterance_ms: _Optional[int] = ...) -> None: ...

class AudioFormat(_message.Message):
    __slots__ = ("sample_rate_hz", "encoding")
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    sample_rate_hz: int
    encoding: SampleEncoding
    def __init__(self, sample_rate_hz: _Optional[int] = ..., encoding: _Optional[_Union[SampleEncoding, str]] = ...) -> None: ...

class StreamStart(_message.Message):
    __slots__ = ("ctx", "format", "vad")
    CTX_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    VAD_FIELD_NUMBER: _ClassVar[int]
    ctx: _common_pb2.CallContext
    format: AudioFormat
    vad: VadConfig
    def __init__(self, ctx: _Optional[_Union[_common_pb2.CallContext, _Mapping]] = ..., format: _Optional[_Union[AudioFormat, _Mapping]] = ..., vad: _Optional[_Union[VadConfig, _Mapping]] = ...) -> None: ...

class PcmChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AudioInput(_message.Message):
    __slots__ = ("start", "chunk", "commit")
    START_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    start: StreamStart
    chunk: PcmChunk
    commit: Commit
    def __init__(self, start: _Optional[_Union[StreamStart, _Mapping]] = ..., chunk: _Optional[_Union[PcmChunk, _Mapping]] = ..., commit: _Optional[_Union[Commit, _Mapping]] = ...) -> None: ...

class SpeechStarted(_message.Message):
    __slots__ = ("offset_ms",)
    OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    offset_ms: int
    def __init__(self, offset_ms: _Optional[int] = ...) -> None: ...

class SpeechStopped(_message.Message):
    __slots__ = ("offset_ms",)
    OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    offset_ms: int
    def __init__(self, offset_ms: _Optional[int] = ...) -> None: ...

class Utterance(_message.Message):
    __slots__ = ("index", "embeddings", "pcm16k", "duration_ms", "eos_to_ready_ns", "timings")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    PCM16K_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    EOS_TO_READY_NS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    index: int
    embeddings: _common_pb2.Tensor
    pcm16k: bytes
    duration_ms: int
    eos_to_ready_ns: int
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, index: _Optional[int] = ..., embeddings: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., pcm16k: _Optional[bytes] = ..., duration_ms: _Optional[int] = ..., eos_to_ready_ns: _Optional[int] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class UtteranceDropped(_message.Message):
    __slots__ = ("reason", "duration_ms")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    reason: DropReason
    duration_ms: int
    def __init__(self, reason: _Optional[_Union[DropReason, str]] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class AudioOutput(_message.Message):
    __slots__ = ("speech_started", "speech_stopped", "utterance", "dropped")
    SPEECH_STARTED_FIELD_NUMBER: _ClassVar[int]
    SPEECH_STOPPED_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    speech_started: SpeechStarted
    speech_stopped: SpeechStopped
    utterance: Utterance
    dropped: UtteranceDropped
    def __init__(self, speech_started: _Optional[_Union[SpeechStarted, _Mapping]] = ..., speech_stopped: _Optional[_Union[SpeechStopped, _Mapping]] = ..., utterance: _Optional[_Union[Utterance, _Mapping]] = ..., dropped: _Optional[_Union[UtteranceDropped, _Mapping]] = ...) -> None: ...

class EncodeClipRequest(_message.Message):
    __slots__ = ("ctx", "pcm", "file", "format")
    CTX_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ctx: _common_pb2.CallContext
    pcm: bytes
    file: bytes
    format: AudioFormat
    def __init__(self, ctx: _Optional[_Union[_common_pb2.CallContext, _Mapping]] = ..., pcm: _Optional[bytes] = ..., file: _Optional[bytes] = ..., format: _Optional[_Union[AudioFormat, _Mapping]] = ...) -> None: ...

class EncodeClipResponse(_message.Message):
    __slots__ = ("embeddings", "duration_ms", "pcm16k", "timings")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    PCM16K_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _common_pb2.Tensor
    duration_ms: int
    pcm16k: bytes
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, embeddings: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., duration_ms: _Optional[int] = ..., pcm16k: _Optional[bytes] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("hidden_size", "tokens_per_second", "weights")
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    hidden_size: int
    tokens_per_second: float
    weights: _common_pb2.WeightsInfo
    def __init__(self, hidden_size: _Optional[int] = ..., tokens_per_second: _Optional[float] = ..., weights: _Optional[_Union[_common_pb2.WeightsInfo, _Mapping]] = ...) -> None: ...

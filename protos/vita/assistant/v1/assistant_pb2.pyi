from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TurnOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TURN_OUTCOME_UNSPECIFIED: _ClassVar[TurnOutcome]
    TURN_OUTCOME_COMPLETED: _ClassVar[TurnOutcome]
    TURN_OUTCOME_CANCELLED: _ClassVar[TurnOutcome]
    TURN_OUTCOME_BARGED_IN: _ClassVar[TurnOutcome]
    TURN_OUTCOME_SUPPRESSED: _ClassVar[TurnOutcome]
    TURN_OUTCOME_FAILED: _ClassVar[TurnOutcome]

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM16: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_F32: _ClassVar[AudioEncoding]

class FlushReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLUSH_REASON_UNSPECIFIED: _ClassVar[FlushReason]
    FLUSH_REASON_BARGE_IN: _ClassVar[FlushReason]
    FLUSH_REASON_CANCEL: _ClassVar[FlushReason]
TURN_OUTCOME_UNSPECIFIED: TurnOutcome
TURN_OUTCOME_COMPLETED: TurnOutcome
TURN_OUTCOME_CANCELLED: TurnOutcome
TURN_OUTCOME_BARGED_IN: TurnOutcome
TURN_OUTCOME_SUPPRESSED: TurnOutcome
TURN_OUTCOME_FAILED: TurnOutcome
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_PCM16: AudioEncoding
AUDIO_ENCODING_F32: AudioEncoding
FLUSH_REASON_UNSPECIFIED: FlushReason
FLUSH_REASON_BARGE_IN: FlushReason
FLUSH_REASON_CANCEL: FlushReason

class VoiceActivityConfig(_message.Message):
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

class SessionConfig(_message.Message):
    __slots__ = ("max_reply_tokens", "speech_output", "temperature", "seed", "max_image_tiles", "vad", "max_history_turns")
    MAX_REPLY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SPEECH_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_TILES_FIELD_NUMBER: _ClassVar[int]
    VAD_FIELD_NUMBER: _ClassVar[int]
    MAX_HISTORY_TURNS_FIELD_NUMBER: _ClassVar[int]
    max_reply_tokens: int
    speech_output: bool
    temperature: float
    seed: int
    max_image_tiles: int
    vad: VoiceActivityConfig
    max_history_turns: int
    def __init__(self, max_reply_tokens: _Optional[int] = ..., speech_output: _Optional[bool] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., max_image_tiles: _Optional[int] = ..., vad: _Optional[_Union[VoiceActivityConfig, _Mapping]] = ..., max_history_turns: _Optional[int] = ...) -> None: ...

class HistoryTurn(_message.Message):
    __slots__ = ("turn_id", "user_text", "reply_text", "outcome", "media", "started_unix_ms")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    USER_TEXT_FIELD_NUMBER: _ClassVar[int]
    REPLY_TEXT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    user_text: str
    reply_text: str
    outcome: TurnOutcome
    media: _containers.RepeatedScalarFieldContainer[str]
    started_unix_ms: int
    def __init__(self, turn_id: _Optional[str] = ..., user_text: _Optional[str] = ..., reply_text: _Optional[str] = ..., outcome: _Optional[_Union[TurnOutcome, str]] = ..., media: _Optional[_Iterable[str]] = ..., started_unix_ms: _Optional[int] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "config", "history", "created_unix_ms", "running_turn_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TURN_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    config: SessionConfig
    history: _containers.RepeatedCompositeFieldContainer[HistoryTurn]
    created_unix_ms: int
    running_turn_id: str
    def __init__(self, session_id: _Optional[str] = ..., config: _Optional[_Union[SessionConfig, _Mapping]] = ..., history: _Optional[_Iterable[_Union[HistoryTurn, _Mapping]]] = ..., created_unix_ms: _Optional[int] = ..., running_turn_id: _Optional[str] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: SessionConfig
    def __init__(self, config: _Optional[_Union[SessionConfig, _Mapping]] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConverseStart(_message.Message):
    __slots__ = ("session_id", "input_sample_rate_hz", "input_encoding")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    INPUT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    input_sample_rate_hz: int
    input_encoding: AudioEncoding
    def __init__(self, session_id: _Optional[str] = ..., input_sample_rate_hz: _Optional[int] = ..., input_encoding: _Optional[_Union[AudioEncoding, str]] = ...) -> None: ...

class MediaInput(_message.Message):
    __slots__ = ("image", "video", "max_tiles")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    MAX_TILES_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    video: bytes
    max_tiles: int
    def __init__(self, image: _Optional[bytes] = ..., video: _Optional[bytes] = ..., max_tiles: _Optional[int] = ...) -> None: ...

class UserTurn(_message.Message):
    __slots__ = ("turn_id", "text", "media", "seed", "max_reply_tokens")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    text: str
    media: _containers.RepeatedCompositeFieldContainer[MediaInput]
    seed: int
    max_reply_tokens: int
    def __init__(self, turn_id: _Optional[str] = ..., text: _Optional[str] = ..., media: _Optional[_Iterable[_Union[MediaInput, _Mapping]]] = ..., seed: _Optional[int] = ..., max_reply_tokens: _Optional[int] = ...) -> None: ...

class AudioAppend(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class AudioCommit(_message.Message):
    __slots__ = ("turn_id", "media")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    media: _containers.RepeatedCompositeFieldContainer[MediaInput]
    def __init__(self, turn_id: _Optional[str] = ..., media: _Optional[_Iterable[_Union[MediaInput, _Mapping]]] = ...) -> None: ...

class CameraFrame(_message.Message):
    __slots__ = ("timestamp_ms", "jpeg")
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    JPEG_FIELD_NUMBER: _ClassVar[int]
    timestamp_ms: int
    jpeg: bytes
    def __init__(self, timestamp_ms: _Optional[int] = ..., jpeg: _Optional[bytes] = ...) -> None: ...

class CancelTurn(_message.Message):
    __slots__ = ("turn_id",)
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    def __init__(self, turn_id: _Optional[str] = ...) -> None: ...

class PlaybackPosition(_message.Message):
    __slots__ = ("turn_id", "played_ms")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    PLAYED_MS_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    played_ms: int
    def __init__(self, turn_id: _Optional[str] = ..., played_ms: _Optional[int] = ...) -> None: ...

class ClientEvent(_message.Message):
    __slots__ = ("start", "turn", "audio", "audio_commit", "camera_frame", "cancel", "playback")
    START_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    AUDIO_COMMIT_FIELD_NUMBER: _ClassVar[int]
    CAMERA_FRAME_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    PLAYBACK_FIELD_NUMBER: _ClassVar[int]
    start: ConverseStart
    turn: UserTurn
    audio: AudioAppend
    audio_commit: AudioCommit
    camera_frame: CameraFrame
    cancel: CancelTurn
    playback: PlaybackPosition
    def __init__(self, start: _Optional[_Union[ConverseStart, _Mapping]] = ..., turn: _Optional[_Union[UserTurn, _Mapping]] = ..., audio: _Optional[_Union[AudioAppend, _Mapping]] = ..., audio_commit: _Optional[_Union[AudioCommit, _Mapping]] = ..., camera_frame: _Optional[_Union[CameraFrame, _Mapping]] = ..., cancel: _Optional[_Union[CancelTurn, _Mapping]] = ..., playback: _Optional[_Union[PlaybackPosition, _Mapping]] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ("session", "weights")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    session: Session
    weights: str
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., weights: _Optional[str] = ...) -> None: ...

class TurnStarted(_message.Message):
    __slots__ = ("input", "prompt_tokens")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    input: str
    prompt_tokens: int
    def __init__(self, input: _Optional[str] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class AudioOut(_message.Message):
    __slots__ = ("pcm", "sample_rate_hz", "segment_index")
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    sample_rate_hz: int
    segment_index: int
    def __init__(self, pcm: _Optional[bytes] = ..., sample_rate_hz: _Optional[int] = ..., segment_index: _Optional[int] = ...) -> None: ...

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

class ReplySuppressed(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PlaybackFlush(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: FlushReason
    def __init__(self, reason: _Optional[_Union[FlushReason, str]] = ...) -> None: ...

class StageTime(_message.Message):
    __slots__ = ("stage", "queue_ms", "compute_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    queue_ms: float
    compute_ms: float
    def __init__(self, stage: _Optional[str] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ...) -> None: ...

class TurnTimings(_message.Message):
    __slots__ = ("ttft_ms", "ttfa_ms", "eos_to_audio_ms", "total_ms", "stages")
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TTFA_MS_FIELD_NUMBER: _ClassVar[int]
    EOS_TO_AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    ttft_ms: float
    ttfa_ms: float
    eos_to_audio_ms: float
    total_ms: float
    stages: _containers.RepeatedCompositeFieldContainer[StageTime]
    def __init__(self, ttft_ms: _Optional[float] = ..., ttfa_ms: _Optional[float] = ..., eos_to_audio_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., stages: _Optional[_Iterable[_Union[StageTime, _Mapping]]] = ...) -> None: ...

class TurnCompleted(_message.Message):
    __slots__ = ("outcome", "timings", "reply_text", "audio_samples", "codec_tokens", "reply_tokens", "cached_prompt_tokens", "prefilled_prompt_tokens")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REPLY_TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CODEC_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REPLY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILLED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    outcome: TurnOutcome
    timings: TurnTimings
    reply_text: str
    audio_samples: int
    codec_tokens: int
    reply_tokens: int
    cached_prompt_tokens: int
    prefilled_prompt_tokens: int
    def __init__(self, outcome: _Optional[_Union[TurnOutcome, str]] = ..., timings: _Optional[_Union[TurnTimings, _Mapping]] = ..., reply_text: _Optional[str] = ..., audio_samples: _Optional[int] = ..., codec_tokens: _Optional[int] = ..., reply_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ..., prefilled_prompt_tokens: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "retry_after_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    retry_after_ms: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class ServerEvent(_message.Message):
    __slots__ = ("session_id", "turn_id", "server_time_unix_ns", "ready", "turn_started", "text_delta", "audio", "turn_completed", "error", "speech_started", "speech_stopped", "reply_suppressed", "playback_flush")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    TURN_STARTED_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TURN_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SPEECH_STARTED_FIELD_NUMBER: _ClassVar[int]
    SPEECH_STOPPED_FIELD_NUMBER: _ClassVar[int]
    REPLY_SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    PLAYBACK_FLUSH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turn_id: str
    server_time_unix_ns: int
    ready: Ready
    turn_started: TurnStarted
    text_delta: TextDelta
    audio: AudioOut
    turn_completed: TurnCompleted
    error: Error
    speech_started: SpeechStarted
    speech_stopped: SpeechStopped
    reply_suppressed: ReplySuppressed
    playback_flush: PlaybackFlush
    def __init__(self, session_id: _Optional[str] = ..., turn_id: _Optional[str] = ..., server_time_unix_ns: _Optional[int] = ..., ready: _Optional[_Union[Ready, _Mapping]] = ..., turn_started: _Optional[_Union[TurnStarted, _Mapping]] = ..., text_delta: _Optional[_Union[TextDelta, _Mapping]] = ..., audio: _Optional[_Union[AudioOut, _Mapping]] = ..., turn_completed: _Optional[_Union[TurnCompleted, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., speech_started: _Optional[_Union[SpeechStarted, _Mapping]] = ..., speech_stopped: _Optional[_Union[SpeechStopped, _Mapping]] = ..., reply_suppressed: _Optional[_Union[ReplySuppressed, _Mapping]] = ..., playback_flush: _Optional[_Union[PlaybackFlush, _Mapping]] = ...) -> None: ...

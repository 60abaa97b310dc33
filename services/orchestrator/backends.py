"""What the turn pipeline needs from the model services, as plain Python types.

Two implementations: `grpc_backends` (the distributed stack) and `apps.inprocess` (the same engines called
directly, no gRPC, no Redis: the floor for `vita bench --inprocess` and the reference for determinism).

Embedding rows are `WireTensor`s, bytes the orchestrator forwards from the encoders to the LLM unchanged:
it never needs their values, so it never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

from shared.wire_tensor import WireTensor


@dataclass(frozen=True)
class CallIds:
    session_id: str
    turn_id: str
    seed: int | None = None


@dataclass(frozen=True)
class StageTime:
    stage: str
    queue_ns: int = 0
    compute_ns: int = 0


# ----- prompt pieces -----


@dataclass(frozen=True)
class TokenPiece:
    ids: tuple[int, ...]


@dataclass(frozen=True)
class MediaPiece:
    """Embedding rows of one image, video or audio clip; rows None = expected in the LLM's cache."""

    content_id: str
    num_rows: int
    rows: WireTensor | None = None


PromptPiece = TokenPiece | MediaPiece


# ----- LLM -----


@dataclass(frozen=True)
class LLMDelta:
    token_ids: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class LLMDone:
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    prefilled_tokens: int
    generated_tokens: int
    timings: tuple[StageTime, ...] = ()


@dataclass(frozen=True)
class LLMFacts:
    max_context_tokens: int
    hidden_size: int
    eos_token_id: int
    weights: str  # "random:tiny" / "checkpoint:/path"


class LLMBackend(Protocol):
    def generate(
        self, ids: CallIds, prompt: list[PromptPiece], *, max_new_tokens: int, temperature: float, top_p: float
    ) -> AsyncIterator[LLMDelta | LLMDone]: ...

    async def describe(self) -> LLMFacts: ...

    async def release_session(self, session_id: str) -> None: ...


# ----- speech -----


@dataclass(frozen=True)
class SpeechAudio:
    pcm: bytes  # int16 little-endian mono
    sample_rate_hz: int
    segment_index: int


@dataclass(frozen=True)
class SpeechSegmentDone:
    segment_index: int
    codec_tokens: int
    finish_reason: str
    timings: tuple[StageTime, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class SpeechDone:
    reason: str


SpeechEvent = SpeechAudio | SpeechSegmentDone | SpeechDone


class SpeechStream(Protocol):
    async def push(self, index: int, text: str) -> None: ...

    async def end(self) -> None:
        """No more segments: the queued ones are still spoken ("end drains")."""

    def cancel(self) -> None:
        """Drop everything queued and stop within one AR step ("cancel drops")."""

    def events(self) -> AsyncIterator[SpeechEvent]: ...


class SpeechBackend(Protocol):
    async def open(self, ids: CallIds) -> SpeechStream: ...


class BackendError(Exception):
    """A model service refused or failed a call; `code` is a grpc.StatusCode name (e.g. "UNAVAILABLE")."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ----- media encoders -----


@dataclass(frozen=True)
class EncodedMedia:
    """LLM input rows of one image (all its tiles), video (all its frames) or audio clip."""

    kind: str  # "image" | "video" | "audio"
    rows: WireTensor  # [num_rows, hidden]
    timings: tuple[StageTime, ...] = ()

    @property
    def num_rows(self) -> int:
        return self.rows.num_rows


class VisionBackend(Protocol):
    async def encode_image(self, ids: CallIds, data: bytes, max_tiles: int) -> EncodedMedia: ...

    async def encode_video(self, ids: CallIds, data: bytes) -> EncodedMedia: ...

    async def encode_frames(self, ids: CallIds, frames: list[tuple[int, bytes]]) -> EncodedMedia: ...


# Voice stream events (the audio service's VAD and encoder, per Converse stream).


@dataclass(frozen=True)
class VoiceSpeechStarted:
    offset_ms: int


@dataclass(frozen=True)
class VoiceSpeechStopped:
    offset_ms: int


@dataclass(frozen=True)
class VoiceUtterance:
    index: int
    clip: EncodedMedia
    pcm16k: bytes
    duration_ms: int
    eos_to_ready_ns: int


@dataclass(frozen=True)
class VoiceDropped:
    reason: str
    duration_ms: int


VoiceEvent = VoiceSpeechStarted | VoiceSpeechStopped | VoiceUtterance | VoiceDropped


@dataclass(frozen=True)
class VoiceFormat:
    sample_rate_hz: int
    encoding: str  # "pcm16" | "f32"


@dataclass(frozen=True)
class VadParameters:
    enabled: bool
    start_threshold: float
    end_threshold: float
    min_silence_ms: int
    pre_roll_ms: int
    min_utterance_ms: int
    max_utterance_ms: int


class VoiceStream(Protocol):
    async def send(self, pcm: bytes) -> None: ...

    async def commit(self) -> None: ...

    def events(self) -> AsyncIterator[VoiceEvent]: ...

    def close(self) -> None: ...


class AudioBackend(Protocol):
    async def open_stream(self, ids: CallIds, fmt: VoiceFormat, vad: VadParameters) -> VoiceStream: ...

    async def encode_clip(self, ids: CallIds, pcm16k: bytes) -> EncodedMedia: ...

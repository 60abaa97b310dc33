"""What the turn pipeline needs from the model services, as plain Python types.

Two implementations: `grpc_backends` (the distributed stack) and `inprocess` (the same engines called
directly, no gRPC, no Redis: the floor for `vita bench --inprocess` and the reference for determinism).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

import torch


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
    rows: torch.Tensor | None = None


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

"""What an audio stream reports: VAD events and encoded (or dropped) utterances, on the stream's 16 kHz
timeline."""

from __future__ import annotations

import enum
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from services.audio.features import MODEL_SAMPLE_RATE_HZ


def samples_to_ms(samples: int) -> float:
    return samples * 1000.0 / MODEL_SAMPLE_RATE_HZ


class StopReason(str, enum.Enum):
    SILENCE = "silence"  # VAD saw min_silence_ms of silence
    COMMIT = "commit"  # the client committed (push-to-talk, or a manual end of turn)
    MAX_LENGTH = "max_length"  # max_utterance_ms reached
    END_OF_INPUT = "end_of_input"  # the client ended the stream while speaking


class DropReason(str, enum.Enum):
    TOO_SHORT = "too_short"  # under min_utterance_ms (VAD) or under 85 ms (push-to-talk)
    TOO_LONG = "too_long"  # reached max_utterance_ms: the turn should end with an error
    EMPTY = "empty"  # a commit with no audio since the last one
    CANCELLED = "cancelled"  # the client cancelled the utterance in progress


@dataclass(frozen=True)
class StageTiming:
    stage: str  # "audio.<stage>"
    queue_ns: int
    compute_ns: int


@dataclass(frozen=True)
class SpeechStarted:
    utterance_index: int
    offset_samples: int  # 16 kHz stream position where the utterance begins (pre-roll included)

    @property
    def offset_ms(self) -> float:
        return samples_to_ms(self.offset_samples)


@dataclass(frozen=True)
class SpeechStopped:
    utterance_index: int
    offset_samples: int  # 16 kHz stream position where speech ended
    reason: StopReason
    # Resolves to the UtteranceReady of this utterance; None when it is dropped (an UtteranceDropped
    # follows in the same event list).
    utterance: Future[UtteranceReady] | None = None

    @property
    def offset_ms(self) -> float:
        return samples_to_ms(self.offset_samples)


@dataclass(frozen=True)
class UtteranceReady:
    utterance_index: int
    embeddings: torch.Tensor  # [L, llm_hidden], CPU
    pcm16k: np.ndarray  # int16 mono 16 kHz: the audio that was encoded (for history / re-prefill)
    duration_ms: float
    eos_to_ready_ns: int  # end of speech seen by the server → embeddings ready
    timings: tuple[StageTiming, ...]


@dataclass(frozen=True)
class UtteranceDropped:
    utterance_index: int
    reason: DropReason
    duration_ms: float


AudioEvent = Union[SpeechStarted, SpeechStopped, UtteranceReady, UtteranceDropped]


def wait_for_utterances(events: list[AudioEvent], timeout: float | None = None) -> list[AudioEvent]:
    """`events` with each encoded utterance's UtteranceReady inserted after its SpeechStopped (blocking).

    For synchronous callers (tests, benchmarks); a servicer awaits `SpeechStopped.utterance` instead.
    """
    resolved: list[AudioEvent] = []
    for event in events:
        resolved.append(event)
        if isinstance(event, SpeechStopped) and event.utterance is not None:
            resolved.append(event.utterance.result(timeout))
    return resolved

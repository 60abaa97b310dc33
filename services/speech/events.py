"""What the speech engine hands back: per-stream events, the stats snapshot, and the errors its public
methods raise synchronously. Plain data, no model code, so a servicer can import it cheaply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shared import engine_loop


@dataclass(frozen=True)
class AudioEvent:
    stream_id: str
    segment_index: int
    pcm: np.ndarray  # int16 mono at 24 kHz


@dataclass(frozen=True)
class SegmentDoneEvent:
    stream_id: str
    segment_index: int
    codec_tokens: int
    finish_reason: str  # "eos" | "length_cap" | "empty"
    text_tokens: int
    queue_ns: int  # push_segment → synthesis start
    nar_prefill_ns: int
    ar_ns: int  # wall time of the AR steps this segment took part in
    codec_ns: int  # wall time of the codec calls that decoded its windows


@dataclass(frozen=True)
class StreamDoneEvent:
    stream_id: str
    reason: str  # "completed" | "cancelled"


@dataclass(frozen=True)
class StreamFailedEvent:
    stream_id: str
    error: Exception


SpeechEvent = AudioEvent | SegmentDoneEvent | StreamDoneEvent | StreamFailedEvent
EventCallback = Callable[[SpeechEvent], None]


@dataclass(frozen=True)
class SpeechStats:
    open_streams: int
    decoding_segments: int  # segments in the AR batch
    queued_segments: int  # pushed, not started yet
    ar_steps: int
    ar_rows: int  # Σ active rows over AR steps (ar_rows / ar_steps = mean batch occupancy)
    codec_calls: int
    codec_windows: int
    codec_tokens_generated: int
    audio_samples: int
    segments_completed: int
    streams_completed: int
    cancelled_total: int
    failed_total: int
    loop: engine_loop.LoopStats = field(default_factory=engine_loop.LoopStats)  # the worker loop's own counters


class SpeechEngineError(Exception):
    """Base class of the errors public methods raise synchronously."""


class EngineStoppedError(SpeechEngineError, engine_loop.EngineStoppedError):
    pass


class UnknownStreamError(SpeechEngineError, LookupError):
    pass


class DuplicateStreamError(SpeechEngineError, ValueError):
    pass


class SpeechBusyError(SpeechEngineError):
    """Admission control: too many streams open, or too many unfinished segments on one stream (maps to
    RESOURCE_EXHAUSTED with `retry_after_ms` as the hint)."""

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(f"{message}; retry in {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


class StreamClosedError(SpeechEngineError):
    """push/end after end_stream or cancel_stream."""


class SegmentOrderError(SpeechEngineError, ValueError):
    pass


class SegmentTooLongError(SpeechEngineError, ValueError):
    pass

"""Typed events: one dataclass per server event, plus the events the SDK itself raises (a reconnect, a turn
cut by a transport drop, the end of the stream).

Every event carries the turn it belongs to ("" for stream-level events), its arrival time on this
machine (`time.perf_counter()` seconds, to measure latency) and, for server events, the server's send
time and the raw protobuf message (for fields newer than this SDK).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc

from sdk.sessions import Session, enum_text
from vita.assistant.v1 import assistant_pb2 as pb

# Reply audio is mono PCM16: two bytes a sample.
PCM16_BYTES = 2


@dataclass(frozen=True, kw_only=True)
class Event:
    turn_id: str = ""
    received_at: float = field(default_factory=time.perf_counter, compare=False)
    server_time_unix_ns: int = field(default=0, compare=False)
    raw: pb.ServerEvent | None = field(default=None, compare=False, repr=False)


# ----- server events ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Ready(Event):
    session: Session
    weights: str  # which weights are served, e.g. "random:tiny"


@dataclass(frozen=True, kw_only=True)
class TurnStarted(Event):
    input: str  # "text" or "audio"
    prompt_tokens: int


@dataclass(frozen=True, kw_only=True)
class TextDelta(Event):
    text: str


@dataclass(frozen=True, kw_only=True)
class AudioChunk(Event):
    pcm: bytes = field(repr=False)  # mono PCM16 little-endian
    sample_rate_hz: int
    segment_index: int

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) / PCM16_BYTES * 1000.0 / self.sample_rate_hz if self.sample_rate_hz else 0.0


@dataclass(frozen=True, kw_only=True)
class SpeechStarted(Event):
    offset_ms: int  # position in this stream's input audio


@dataclass(frozen=True, kw_only=True)
class SpeechStopped(Event):
    offset_ms: int


@dataclass(frozen=True, kw_only=True)
class ReplySuppressed(Event):
    """The model judged the speech not addressed to it: no reply speech follows."""


@dataclass(frozen=True, kw_only=True)
class PlaybackFlush(Event):
    """Stop playing this turn's queued audio."""

    reason: str  # "barge_in" or "cancel"


@dataclass(frozen=True)
class StageTime:
    stage: str  # "<service>.<stage>", e.g. "llm.prefill"
    queue_ms: float
    compute_ms: float


@dataclass(frozen=True)
class Timings:
    """Server-side turn timings, in ms from the end of the user's input."""

    ttft_ms: float
    ttfa_ms: float  # 0 without audio
    eos_to_audio_ms: float  # spoken turns only
    total_ms: float
    stages: tuple[StageTime, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TurnCompleted(Event):
    outcome: str  # "completed", "cancelled", "barged_in", "suppressed" or "failed"
    timings: Timings
    reply_text: str
    audio_samples: int  # at 24 kHz
    codec_tokens: int
    reply_tokens: int
    cached_prompt_tokens: int
    prefilled_prompt_tokens: int


@dataclass(frozen=True, kw_only=True)
class TurnError(Event):
    """A refused or failed turn (turn_id set), or a refused stream-level input such as bad audio (turn_id
    empty). The stream stays open."""

    code: grpc.StatusCode
    message: str
    retry_after_ms: int = 0  # with RESOURCE_EXHAUSTED / UNAVAILABLE: wait this long before a retry (0: no hint)


# ----- SDK events ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TurnInterrupted(Event):
    """The transport dropped (or the conversation closed) while this turn ran. What arrived is kept here;
    the server's history keeps what it delivered, and the turn is not retried."""

    reason: str
    received_text: str
    received_audio_ms: float


@dataclass(frozen=True, kw_only=True)
class Reconnected(Event):
    """The stream is open again on the same session after a drop."""

    attempts: int
    downtime_s: float
    session: Session  # as the server has it now
    dropped_audio_ms: float  # input audio appended while the stream was down (not sent)


@dataclass(frozen=True, kw_only=True)
class StreamEnded(Event):
    """The stream is over for good: closed by the caller, a refusal that a retry would not fix, or the
    reconnect gave up. `code` is None for a normal close."""

    code: grpc.StatusCode | None
    details: str


def status_code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def from_proto(message: pb.ServerEvent, received_at: float) -> Event:
    """The typed event for a server event; an event kind newer than this SDK comes as a plain `Event`."""
    common = dict(turn_id=message.turn_id, received_at=received_at, server_time_unix_ns=message.server_time_unix_ns,
                  raw=message)
    kind = message.WhichOneof("event")
    if kind == "text_delta":
        return TextDelta(text=message.text_delta.text, **common)
    if kind == "audio":
        audio = message.audio
        return AudioChunk(pcm=audio.pcm, sample_rate_hz=audio.sample_rate_hz, segment_index=audio.segment_index, **common)
    if kind == "turn_started":
        return TurnStarted(input=message.turn_started.input, prompt_tokens=message.turn_started.prompt_tokens, **common)
    if kind == "turn_completed":
        return _completed(message.turn_completed, common)
    if kind == "error":
        return TurnError(code=status_code(message.error.code), message=message.error.message,
                         retry_after_ms=message.error.retry_after_ms, **common)
    if kind == "ready":
        return Ready(session=Session.from_proto(message.ready.session), weights=message.ready.weights, **common)
    if kind == "speech_started":
        return SpeechStarted(offset_ms=message.speech_started.offset_ms, **common)
    if kind == "speech_stopped":
        return SpeechStopped(offset_ms=message.speech_stopped.offset_ms, **common)
    if kind == "reply_suppressed":
        return ReplySuppressed(**common)
    if kind == "playback_flush":
        return PlaybackFlush(reason=enum_text(message.playback_flush, "reason"), **common)
    return Event(**common)


def _completed(done: pb.TurnCompleted, common: dict) -> TurnCompleted:
    t = done.timings
    timings = Timings(t.ttft_ms, t.ttfa_ms, t.eos_to_audio_ms, t.total_ms,
                      tuple(StageTime(s.stage, s.queue_ms, s.compute_ms) for s in t.stages))
    return TurnCompleted(
        outcome=enum_text(done, "outcome"), timings=timings, reply_text=done.reply_text, audio_samples=done.audio_samples,
        codec_tokens=done.codec_tokens, reply_tokens=done.reply_tokens,
        cached_prompt_tokens=done.cached_prompt_tokens, prefilled_prompt_tokens=done.prefilled_prompt_tokens,
        **common,
    )

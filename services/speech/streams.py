"""Per-stream state of the speech engine: what the caller side knows (`StreamHandle`), the segments
waiting (`PendingSegment`), the one being synthesised (`ActiveSegment`) and the stream that holds them.

Torch-free: the sampler and KV cache an active segment owns are opaque here (only the runner touches
them), so the scheduler can read this state without importing torch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.speech.chunker import CodecChunker, CodecWindow
from services.speech.events import EventCallback, SegmentDoneEvent
from services.speech.playback import PlaybackClock
from services.speech.scheduler import StreamView, WaitingSegment

if TYPE_CHECKING:
    import torch

    from services.speech.tts import KVCache


@dataclass
class StreamHandle:
    """Caller-side state of a stream, guarded by the engine's lock: what push/end/cancel validate against
    before they enqueue a command."""

    closed: bool = False  # end_stream or cancel_stream was called
    cancel_requested: bool = False
    last_segment_index: int = -1
    spoken_segments: int = 0  # non-empty segments pushed so far (the first one is chunked finer)
    unfinished_segments: int = 0  # pushed, not yet done (admission control bounds it)


@dataclass(frozen=True)
class PendingSegment:
    index: int
    text_ids: list[int]  # empty: nothing to say
    first: bool  # first spoken segment of the stream: finer chunks, higher splice threshold
    enqueued_ns: int
    max_tokens: int  # length cap in codec tokens (0 when silent)

    @property
    def silent(self) -> bool:
        return not self.text_ids

    def empty_done(self, stream_id: str, now_ns: int) -> SegmentDoneEvent:
        """The SegmentDoneEvent of a silent segment: finished without touching the model."""
        return SegmentDoneEvent(stream_id, self.index, 0, "empty", 0, now_ns - self.enqueued_ns, 0, 0, 0)


@dataclass
class ActiveSegment:
    """A segment in the AR batch: its sampler, KV cache and codec chunker, and what it has produced."""

    pending: PendingSegment
    generator: torch.Generator
    cache: KVCache
    chunker: CodecChunker
    max_tokens: int
    next_token: int  # fed to the next AR step
    started_ns: int
    tokens_generated: int = 0
    finish_reason: str | None = None  # set when EOS is sampled or the length cap is reached
    nar_prefill_ns: int = 0
    ar_ns: int = 0
    codec_ns: int = 0

    @property
    def decoding(self) -> bool:
        return self.finish_reason is None

    def accept_token(self, token: int, eos: int) -> list[CodecWindow]:
        """Takes one sampled codec id; returns the codec windows it made ready (the last one too, when
        the segment ends here). EOS ends the segment without being a token of its audio."""
        windows: list[CodecWindow] = []
        if token == eos:
            self.finish_reason = "eos"
        else:
            self.tokens_generated += 1
            self.next_token = token
            window = self.chunker.push(token)
            if window is not None:
                windows.append(window)
            if self.tokens_generated >= self.max_tokens:
                self.finish_reason = "length_cap"
        if self.finish_reason is not None:
            final = self.chunker.finish()
            if final is not None:
                windows.append(final)
        return windows

    def done(self, stream_id: str) -> SegmentDoneEvent:
        if self.finish_reason is None:
            raise RuntimeError("the segment is still decoding")
        pending = self.pending
        return SegmentDoneEvent(
            stream_id=stream_id,
            segment_index=pending.index,
            codec_tokens=self.tokens_generated,
            finish_reason=self.finish_reason,
            text_tokens=len(pending.text_ids),
            queue_ns=self.started_ns - pending.enqueued_ns,
            nar_prefill_ns=self.nar_prefill_ns,
            ar_ns=self.ar_ns,
            codec_ns=self.codec_ns,
        )


@dataclass
class SpeechStream:
    """Engine-thread state of one open stream."""

    stream_id: str
    seed: int
    on_event: EventCallback
    handle: StreamHandle
    queue: deque[PendingSegment] = field(default_factory=deque)
    active: ActiveSegment | None = None
    ended: bool = False  # end_stream was applied: complete once the queue drains
    playback: PlaybackClock = field(default_factory=lambda: PlaybackClock(24_000))
    codec_tokens_done: int = 0  # codec tokens of the finished segments (later windows grow with it)

    @property
    def audio_samples(self) -> int:
        return self.playback.delivered_samples

    def note_audio(self, samples: int, now_ns: int) -> None:
        self.playback.note_audio(samples, now_ns)

    def buffered_audio_ns(self, now_ns: int) -> int:
        """Delivered audio its listener has not played yet: how far ahead of its listener the stream is."""
        return self.playback.buffered_ns(now_ns)

    def view(self, now_ns: int) -> StreamView:
        """What the scheduler gets to know about this stream."""
        active = self.active
        return StreamView(
            stream_id=self.stream_id,
            decoding_since_ns=active.pending.enqueued_ns if active is not None else None,
            waiting=tuple(WaitingSegment(s.index, s.silent, s.enqueued_ns) for s in self.queue),
            ended=self.ended,
            audio_samples=self.audio_samples,
            buffered_audio_ns=self.buffered_audio_ns(now_ns),
            deadline_ns=self.playback.deadline_ns(),
        )

"""SpeechEngine: text segments → codec tokens → 24 kHz int16 PCM, for many streams at once.

Threading. Public methods are called from any thread (the servicer's event loop); they validate, then post
a command to the engine loop (shared.engine_loop). All model work runs on the loop's ONE worker thread.
Callbacks (`on_event`) run on that thread, so they must be quick (e.g. `loop.call_soon_threadsafe`).

One step, after the loop has applied the queued commands (open / push / end / cancel):
1. the scheduler plans it from a view of every stream (services.speech.scheduler, torch-free);
2. admitted streams finish their empty segments and start their next one (NAR + prefill, per segment);
3. ONE batched AR decode step over the planned rows, then per-row sampling;
4. the codec windows that became ready are decoded, in the calls the scheduler grouped them into;
5. audio / segment-done / stream-done events are delivered.
Work goes earliest playback deadline first (services.speech.scheduler): a stream's first chunk, then the
listener with the least audio buffered; a stream far enough ahead yields its row and codec windows.
The runner (services.speech.runner) does the model work of 2–4 and explains why every batched call has a
fixed shape: a seeded stream sounds the same alone or beside others.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields

import numpy as np
import torch

from services.speech.chunker import CHUNK_GROWTH, CONTEXT_TOKENS, MAX_CHUNK_TOKENS, CodecWindow, float_to_pcm16
from services.speech.events import (
    AudioEvent,
    DuplicateStreamError,
    EngineStoppedError,
    EventCallback,
    SegmentDoneEvent,
    SegmentOrderError,
    SegmentTooLongError,
    SpeechBusyError,
    SpeechEngineError,
    SpeechEvent,
    SpeechStats,
    StreamClosedError,
    StreamDoneEvent,
    StreamFailedEvent,
    UnknownStreamError,
)
from services.speech.intake import LENGTH_CAP_BASE_TOKENS, LengthLimits, SegmentIntake
from services.speech.playback import NS_PER_MS, PlaybackClock
from services.speech.runner import Chunking, SpeechRunner
from services.speech.scheduler import Admission, SchedulePolicy, StreamView, plan_codec_calls, plan_step, urgency
from services.speech.streams import ActiveSegment, PendingSegment, SpeechStream, StreamHandle
from services.speech.weights import SpeechModels
from shared.engine_loop import EngineLoop
from shared.tokenizer import QwenTokenizer

# The engine's public names, importable from here as before the split.
__all__ = [
    "AudioEvent", "DuplicateStreamError", "EngineStoppedError", "EventCallback", "LENGTH_CAP_BASE_TOKENS",
    "SegmentDoneEvent", "SegmentOrderError", "SegmentTooLongError", "SpeechBusyError", "SpeechEngine", "SpeechEngineError",
    "SpeechEvent", "SpeechStats", "StreamClosedError", "StreamDoneEvent", "StreamFailedEvent",
    "UnknownStreamError",
]

log = logging.getLogger(__name__)


@dataclass
class _Counters:
    ar_steps: int = 0
    ar_rows: int = 0
    codec_calls: int = 0
    codec_windows: int = 0
    codec_tokens_generated: int = 0
    audio_samples: int = 0
    segments_completed: int = 0
    streams_completed: int = 0
    cancelled_total: int = 0
    failed_total: int = 0


class SpeechEngine(EngineLoop):
    stopped_error = EngineStoppedError

    def __init__(
        self,
        models: SpeechModels,
        tokenizer: QwenTokenizer,
        *,
        device: torch.device | str,
        max_batch_size: int = 16,
        first_chunk_tokens: int = 20,
        chunk_tokens: int = 40,
        context_tokens: int = CONTEXT_TOKENS,
        codec_tokens_per_text_token: int = 25,
        max_codec_tokens: int = 1000,
        length_cap_base_tokens: int = LENGTH_CAP_BASE_TOKENS,
        codec_batch_size: int = 1,
        max_open_streams: int | None = None,
        max_queued_segments: int | None = None,
        busy_retry_after_ms: int = 1000,
        chunk_growth: float = CHUNK_GROWTH,
        max_chunk_tokens: int = MAX_CHUNK_TOKENS,
        yield_buffer_ms: int | None = 3000,
        first_chunk_yield_ms: int | None = 1000,
        splice_hold_buffer_ms: int = 1000,
        clock: Callable[[], int] = time.perf_counter_ns,
    ):
        """
        max_batch_size: segments decoded together; also the FIXED row count of every AR step (batch
            invariance), so on a CPU serving the full model keep it near the expected concurrency.
        first_chunk_tokens / chunk_tokens / context_tokens: codec chunking (docs/MODEL.md#chunking): 20
            tokens for a stream's first spoken segment, 40 after; 10 tokens of context each side.
        codec_tokens_per_text_token, length_cap_base_tokens, max_codec_tokens: a segment stops after
            min(max_codec_tokens, per_text_token · n_text + base) codec tokens. The reference caps only at
            1000 (25 s); tying the cap to the text bounds a model that misses EOS to ~1 s past any
            plausible reading of the segment (docs/MODEL.md#d-tts-cap).
        codec_batch_size: windows per codec call, padded with dummy windows (batch invariance); 1 on CPU.
        max_open_streams / max_queued_segments: admission control (None = no bound): streams open at once,
            and unfinished segments per stream; past them open_stream / push_segment raise SpeechBusyError.
        chunk_growth / max_chunk_tokens: later windows keep growth x (tokens the stream already delivered),
            up to max_chunk_tokens (services.speech.chunker.WindowSchedule); 0 is the reference's fixed chunks.
        yield_buffer_ms / first_chunk_yield_ms: a stream with more audio buffered than this yields its AR
            row and codec windows to streams that need them (the second threshold applies while a new
            stream waits for its first chunk); None never yields (first come, first served).
        splice_hold_buffer_ms: the low-energy splice may hold audio back only from a listener with at
            least this much buffered.
        clock: monotonic nanoseconds of playback deadlines (a test passes a simulated one).
        """
        if max_batch_size < 1 or codec_batch_size < 1:
            raise ValueError("max_batch_size and codec_batch_size must be ≥ 1")
        super().__init__(name="speech")
        self._max_batch_size = max_batch_size
        self._codec_batch_size = codec_batch_size
        self._runner = SpeechRunner(
            models,
            device=torch.device(device),
            max_rows=max_batch_size,
            codec_batch_size=codec_batch_size,
            chunking=Chunking(first_chunk_tokens, chunk_tokens, context_tokens, chunk_growth, max_chunk_tokens),
        )
        self._policy = SchedulePolicy(
            yield_buffer_ns=None if yield_buffer_ms is None else yield_buffer_ms * NS_PER_MS,
            first_chunk_yield_ns=None if first_chunk_yield_ms is None else first_chunk_yield_ms * NS_PER_MS,
        )
        self._splice_hold_buffer_ns = splice_hold_buffer_ms * NS_PER_MS
        self._clock = clock
        # Codec windows sampled but not decoded yet (a yielding stream's wait), in issue order.
        self._codec_queue: list[tuple[SpeechStream, ActiveSegment, CodecWindow]] = []
        limits = LengthLimits(
            frames_per_text_token=models.frames_per_text_token,
            max_positions=models.tts.dims.max_position_embeddings,
            per_text_token=codec_tokens_per_text_token,
            base_tokens=length_cap_base_tokens,
            max_codec_tokens=max_codec_tokens,
        )
        self._intake = SegmentIntake(tokenizer, limits)
        self._max_open_streams = max_open_streams
        self._max_queued_segments = max_queued_segments
        self._busy_retry_after_ms = busy_retry_after_ms
        # Guarded by inbox_lock: read and written by callers.
        self._handles: dict[str, StreamHandle] = {}
        self._counters = _Counters()
        # Engine-thread state; the dict is changed under inbox_lock because stats() reads it.
        self._streams: dict[str, SpeechStream] = {}

    # ---------------------------------------------------------------- public API (any thread)

    def open_stream(self, stream_id: str, seed: int | None, on_event: EventCallback) -> None:
        stream_seed = seed if seed is not None else secrets.randbits(63)
        with self.inbox_lock:
            self._require_running()
            if stream_id in self._handles:
                raise DuplicateStreamError(f"speech stream {stream_id!r} is already open")
            if self._max_open_streams is not None and len(self._handles) >= self._max_open_streams:
                raise SpeechBusyError(
                    f"the speech service is at capacity ({len(self._handles)} streams open)", self._busy_retry_after_ms
                )
            stream = SpeechStream(stream_id, stream_seed, on_event, StreamHandle(),
                                  playback=PlaybackClock(self._runner.sample_rate_hz))
            self.post(lambda: self._on_open(stream))
            self._handles[stream_id] = stream.handle

    def push_segment(self, stream_id: str, text: str, segment_index: int) -> None:
        """Queue one text segment; a bad one is refused here, synchronously (see services.speech.intake)."""
        enqueued_ns = time.perf_counter_ns()
        with self.inbox_lock:
            self._require_running()
            handle = self._open_handle(stream_id)
            if self._max_queued_segments is not None and handle.unfinished_segments >= self._max_queued_segments:
                raise SpeechBusyError(
                    f"this stream holds {handle.unfinished_segments} unfinished segments (the limit)",
                    self._busy_retry_after_ms,
                )
            segment = self._intake.prepare(handle, text, segment_index, enqueued_ns)
            handle.unfinished_segments += 1
            self.post(lambda: self._on_push(stream_id, segment))

    def end_stream(self, stream_id: str) -> None:
        """End drains: queued segments are still synthesised, then StreamDoneEvent("completed")."""
        with self.inbox_lock:
            self._require_running()
            handle = self._open_handle(stream_id)
            self.post(lambda: self._on_end(stream_id))
            handle.closed = True

    def cancel_stream(self, stream_id: str) -> None:
        """Cancel drops: no AR step starts for it after this returns (at most the one in flight), no
        further audio is delivered, state is freed, then StreamDoneEvent("cancelled").
        Cancelling a stream that already finished is a no-op (cancel races with completion)."""
        with self.inbox_lock:
            handle = self._handles.get(stream_id)
            if handle is None or handle.cancel_requested:
                return
            handle.closed = True
            handle.cancel_requested = True  # read by delivery at once: no audio after this returns
            self.post_if_running(lambda: self._on_cancel(stream_id))

    def report_playback(self, stream_id: str, played_ms: int) -> None:
        """The listener's own play position in the stream's audio: its deadline counts from it. A report
        for a stream that is gone changes nothing."""
        with self.inbox_lock:
            if stream_id not in self._handles:
                return
            self.post_if_running(lambda: self._on_playback(stream_id, played_ms))

    def stats(self) -> SpeechStats:
        with self.inbox_lock:
            counters = {f.name: getattr(self._counters, f.name) for f in fields(_Counters)}
            streams = list(self._streams.values())
            return SpeechStats(
                open_streams=len(self._handles),
                decoding_segments=sum(1 for s in streams if s.active is not None),
                queued_segments=sum(len(s.queue) for s in streams),
                **counters,
                loop=self.loop_stats(),
            )

    # ---------------------------------------------------------------- caller-side helpers (lock held)

    def _require_running(self) -> None:
        if not self.running:
            raise EngineStoppedError("speech engine is not running")

    def _open_handle(self, stream_id: str) -> StreamHandle:
        handle = self._handles.get(stream_id)
        if handle is None:
            raise UnknownStreamError(f"no open speech stream {stream_id!r}")
        if handle.closed:
            raise StreamClosedError(f"speech stream {stream_id!r} was already ended or cancelled")
        return handle

    # ---------------------------------------------------------------- commands (engine thread)

    def _on_open(self, stream: SpeechStream) -> None:
        with self.inbox_lock:
            self._streams[stream.stream_id] = stream

    def _on_push(self, stream_id: str, segment: PendingSegment) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.queue.append(segment)

    def _on_end(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.ended = True

    def _on_playback(self, stream_id: str, played_ms: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.playback.report(played_ms, self._clock())

    def _on_cancel(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._forget(stream)
        self._count(cancelled_total=1)
        self._deliver(stream, StreamDoneEvent(stream_id, "cancelled"))

    # ---------------------------------------------------------------- loop hooks (engine thread)

    def worker_context(self) -> AbstractContextManager:
        return torch.inference_mode()

    def has_work(self) -> bool:
        return any(s.active is not None or s.queue or s.ended for s in self._streams.values())

    def step(self) -> None:
        now_ns = self._clock()
        views = {stream_id: stream.view(now_ns) for stream_id, stream in self._streams.items()}
        plan = plan_step(list(views.values()), self._max_batch_size, self._policy)
        self._admit(plan.admissions)
        rows = [self._streams.get(stream_id) for stream_id in plan.rows]
        ready = self._decode_step([s for s in rows if s is not None and s.active is not None and s.active.decoding])
        self._codec_queue.extend((stream, stream.active, window) for stream, window in ready)
        self._decode_windows(self._due_windows(views, plan.yielding))
        self._finish_segments()

    def _due_windows(self, views: dict[str, StreamView], yielding: frozenset[str]) -> list[tuple[SpeechStream, CodecWindow]]:
        """The queued windows to decode now, most urgent stream first (a stream's own windows stay in
        issue order); a yielding stream's windows wait in the queue."""
        queue = [(stream, segment, window) for stream, segment, window in self._codec_queue
                 if self._alive(stream) and stream.active is segment]
        due = [(position, entry) for position, entry in enumerate(queue) if entry[0].stream_id not in yielding]
        self._codec_queue = [entry for entry in queue if entry[0].stream_id in yielding]

        def key(item: tuple[int, tuple[SpeechStream, ActiveSegment, CodecWindow]]) -> tuple[int, int]:
            position, (stream, _, _) = item
            view = views.get(stream.stream_id)
            return (urgency(view) if view is not None else 0, position)

        return [(stream, window) for _, (stream, _, window) in sorted(due, key=key)]

    def on_step_error(self, error: Exception) -> None:
        # A bug in the step itself: fail every stream rather than leave its consumer waiting forever.
        for stream in list(self._streams.values()):
            self._fail(stream, error)

    def on_stop(self) -> None:
        # Every command accepted before stop() has been applied, so each open stream gets a final event.
        for stream in list(self._streams.values()):
            self._fail(stream, EngineStoppedError("speech engine stopped"))

    # ---------------------------------------------------------------- one step

    def _admit(self, admissions: tuple[Admission, ...]) -> None:
        for admission in admissions:
            stream = self._streams.get(admission.stream_id)
            for _ in admission.silent:
                if not self._alive(stream):
                    break
                self._finish_silent(stream, stream.queue.popleft())
            if admission.start is not None and self._alive(stream):
                segment = stream.queue.popleft()
                try:
                    stream.active = self._runner.begin_segment(stream.seed, segment, stream.codec_tokens_done)
                except Exception as error:  # noqa: BLE001 - one bad segment fails its own stream only
                    self._fail(stream, error)
            if admission.complete and self._alive(stream):
                self._complete(stream)

    def _decode_step(self, batch: list[SpeechStream]) -> list[tuple[SpeechStream, CodecWindow]]:
        """One AR step over `batch`; returns the codec windows that became ready, in issue order."""
        ready: list[tuple[SpeechStream, CodecWindow]] = []
        if not batch:
            return ready
        started = time.perf_counter_ns()
        try:
            logits = self._runner.decode_step([stream.active for stream in batch])
        except Exception as error:  # noqa: BLE001 - the step failed for every row in it
            for stream in batch:
                self._fail(stream, error)
            return ready
        elapsed = time.perf_counter_ns() - started
        self._count(ar_steps=1, ar_rows=len(batch))
        for row, stream in enumerate(batch):
            segment = stream.active
            segment.ar_ns += elapsed
            try:
                ready.extend((stream, window) for window in self._runner.sample(segment, logits[row]))
            except Exception as error:  # noqa: BLE001 - isolate the stream
                self._fail(stream, error)
        return ready

    def _decode_windows(self, ready: list[tuple[SpeechStream, CodecWindow]]) -> None:
        """Decodes `ready` (most urgent first) and hands each waveform back as soon as it and every window
        before it in the list are decoded, so an urgent listener does not wait for the others' codec work."""
        if not ready:
            return
        decoded: dict[int, np.ndarray] = {}  # position in `ready` → waveform
        failed: set[str] = set()
        handed_back = 0
        for call in plan_codec_calls([window.tokens.shape[0] for _, window in ready], self._codec_batch_size):
            group = [ready[position] for position in call.windows]
            started = time.perf_counter_ns()
            try:
                waves = self._runner.decode_windows([window for _, window in group])
            except Exception as error:  # noqa: BLE001 - fail the streams of this call only
                for stream, _ in group:
                    failed.add(stream.stream_id)
                    self._fail(stream, error)
                continue
            elapsed = time.perf_counter_ns() - started
            self._count(codec_calls=1, codec_windows=len(group))
            for slot, position in enumerate(call.windows):
                decoded[position] = waves[slot]
                stream = ready[position][0]
                if stream.active is not None:
                    stream.active.codec_ns += elapsed
            # In list order: a segment may have two windows of different lengths (in different calls).
            while handed_back < len(ready) and handed_back in decoded:
                self._hand_back(*ready[handed_back], decoded.pop(handed_back), failed)
                handed_back += 1
        for position in range(handed_back, len(ready)):  # after a failed call
            if position in decoded:
                self._hand_back(*ready[position], decoded[position], failed)

    def _hand_back(self, stream: SpeechStream, window: CodecWindow, waveform: np.ndarray, failed: set[str]) -> None:
        if stream.stream_id in failed or stream.active is None or not self._alive(stream):
            return
        segment = stream.active
        hold = stream.buffered_audio_ns(self._clock()) >= self._splice_hold_buffer_ns
        try:
            for chunk in segment.chunker.accept(window, waveform, hold=hold):
                self._emit_audio(stream, segment.pending.index, chunk)
        except Exception as error:  # noqa: BLE001 - isolate the stream
            failed.add(stream.stream_id)
            self._fail(stream, error)

    def _emit_audio(self, stream: SpeechStream, segment_index: int, samples: np.ndarray) -> None:
        if stream.handle.cancel_requested or not self._alive(stream):
            return
        pcm = float_to_pcm16(samples)
        stream.note_audio(pcm.shape[0], self._clock())
        self._count(audio_samples=pcm.shape[0])
        self._deliver(stream, AudioEvent(stream.stream_id, segment_index, pcm))

    def _finish_segments(self) -> None:
        for stream in list(self._streams.values()):
            segment = stream.active
            if segment is None or segment.finish_reason is None or segment.chunker.pending_windows:
                continue  # still decoding, or its last windows wait in the codec queue
            # Audio still held back by the splice when no final window was needed (context_tokens = 0).
            tail = segment.chunker.flush_buffer()
            if tail is not None:
                self._emit_audio(stream, segment.pending.index, tail)
            if not self._alive(stream):
                continue  # the consumer's callback failed the stream
            stream.active = None
            stream.codec_tokens_done += segment.tokens_generated
            self._count(segments_completed=1, codec_tokens_generated=segment.tokens_generated)
            self._segment_finished(stream)
            self._deliver(stream, segment.done(stream.stream_id))
            if self._alive(stream) and not stream.queue and stream.ended:
                self._complete(stream)

    def _finish_silent(self, stream: SpeechStream, segment: PendingSegment) -> None:
        self._count(segments_completed=1)
        self._segment_finished(stream)
        self._deliver(stream, segment.empty_done(stream.stream_id, time.perf_counter_ns()))

    # ---------------------------------------------------------------- stream end, delivery and failure

    def _alive(self, stream: SpeechStream | None) -> bool:
        """Still open: not finished, cancelled or failed (a callback may fail a stream mid-step)."""
        return stream is not None and self._streams.get(stream.stream_id) is stream

    def _count(self, **increments: int) -> None:
        with self.inbox_lock:
            for name, value in increments.items():
                setattr(self._counters, name, getattr(self._counters, name) + value)

    def _segment_finished(self, stream: SpeechStream) -> None:
        with self.inbox_lock:
            stream.handle.unfinished_segments -= 1

    def _complete(self, stream: SpeechStream) -> None:
        self._forget(stream)
        # A cancel that raced with the last segment wins: its audio was already suppressed.
        cancelled = stream.handle.cancel_requested
        self._count(**{"cancelled_total" if cancelled else "streams_completed": 1})
        self._deliver(stream, StreamDoneEvent(stream.stream_id, "cancelled" if cancelled else "completed"))

    def _forget(self, stream: SpeechStream) -> None:
        """Free the stream's state (KV cache, chunker buffers) and its id."""
        stream.active = None
        stream.queue.clear()
        with self.inbox_lock:
            self._streams.pop(stream.stream_id, None)
            if self._handles.get(stream.stream_id) is stream.handle:
                del self._handles[stream.stream_id]

    def _deliver(self, stream: SpeechStream, event: SpeechEvent) -> None:
        if isinstance(event, (AudioEvent, SegmentDoneEvent)) and stream.handle.cancel_requested:
            return  # cancel drops: nothing more than the StreamDoneEvent after a cancel
        try:
            stream.on_event(event)
        except Exception as error:  # noqa: BLE001 - a broken consumer fails its own stream only
            if isinstance(event, (StreamDoneEvent, StreamFailedEvent)):
                log.exception("speech stream %s: event callback failed on its final event", stream.stream_id)
                return
            self._fail(stream, error)

    def _fail(self, stream: SpeechStream, error: Exception) -> None:
        if not self._alive(stream):
            return  # already finished, cancelled or failed
        log.error("speech stream %s failed: %s", stream.stream_id, type(error).__name__, exc_info=error)
        self._forget(stream)
        self._count(failed_total=1)
        self._deliver(stream, StreamFailedEvent(stream.stream_id, error))

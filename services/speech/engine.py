"""SpeechEngine: text segments → codec tokens → 24 kHz int16 PCM, for many streams at once.

Threading. Public methods are called from any thread (the servicer's event loop); they validate, then
enqueue a command. All model work runs on ONE background worker thread. Callbacks (`on_event`) run on
that thread, so they must be quick (e.g. `loop.call_soon_threadsafe`).

One worker iteration:
1. apply queued commands (open / push / end / cancel); drop cancelled streams;
2. start newly due segments: normalise-ready ids → embedding rows → NAR pre-net → bidirectional prefill,
   one segment at a time (shapes depend only on that segment);
3. ONE batched AR decode step over every decoding segment (≤ max_batch_size rows);
4. decode the codec windows that became ready, grouped by window length into fixed-size codec calls;
5. emit audio / segment-done / stream-done events.

Batch invariance (DESIGN rule 7: a seeded stream sounds the same alone or beside others). BLAS/oneDNN
pick different kernels for different batch sizes (a 1-row Linear is a GEMV, a 3-row one a GEMM, and
the low bits differ; measured here up to 1e-4 on the logits; likewise a 1-window conv takes another
backend than a 2-window one). A one-ULP change in a probability or a sample is enough to flip a
sampled id or an int16 value. So every batched call has a FIXED shape, whatever the load:
* the AR step always runs the Linear layers on [max_batch_size, d], free rows zero-filled; with a fixed
  shape each row's result is independent of the other rows (checked: row position and neighbours do
  not change a bit). Decode is memory-bound, so the padding rows are nearly free;
* attention runs per stream over its own KV cache (no padded attention, whose reduction length would
  depend on the longest neighbour);
* NAR + prefill run per segment;
* codec windows are decoded `codec_batch_size` at a time, padded with dummy windows of the same length.
  The codec is compute-bound, so padding is not free: 1 (the default) suits CPUs; accelerators
  with spare parallelism should use more.
Sampling happens on the CPU, per row, with the row's own torch.Generator.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from services.speech.chunker import (
    CONTEXT_TOKENS,
    FIRST_SEGMENT_SEG_THRESHOLD,
    SEG_THRESHOLD,
    CodecChunker,
    CodecWindow,
    float_to_pcm16,
)
from services.speech.text import is_silent, normalize_segment
from services.speech.tts import (
    KVCache,
    banned_sample_ids,
    eos_id,
    max_codec_tokens_for,
    pad_id,
    sample_codec_token,
    sos_id,
    text_frames,
)
from services.speech.weights import SpeechModels
from shared.tokenizer import QwenTokenizer

log = logging.getLogger(__name__)

# Length cap: 1 s of slack on top of the per-text-token budget (see tts.max_codec_tokens_for).
LENGTH_CAP_BASE_TOKENS = 40
IDLE_WAIT_S = 1.0


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


class SpeechEngineError(Exception):
    """Base class of the errors public methods raise synchronously."""


class EngineStoppedError(SpeechEngineError):
    pass


class UnknownStreamError(SpeechEngineError, LookupError):
    pass


class DuplicateStreamError(SpeechEngineError, ValueError):
    pass


class StreamClosedError(SpeechEngineError):
    """push/end after end_stream or cancel_stream."""


class SegmentOrderError(SpeechEngineError, ValueError):
    pass


class SegmentTooLongError(SpeechEngineError, ValueError):
    pass


def segment_seed(stream_seed: int, segment_index: int) -> int:
    """Seed of one segment's sampler: a stable hash, so segments are independent of each other."""
    digest = hashlib.sha256(f"vita-speech:{stream_seed}:{segment_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class _Handle:
    """Caller-side state of a stream, guarded by SpeechEngine._lock."""

    closed: bool = False  # end_stream or cancel_stream was called
    cancel_requested: bool = False
    last_segment_index: int = -1
    spoken_segments: int = 0  # non-empty segments pushed so far (the first one is chunked finer)


@dataclass
class _PendingSegment:
    index: int
    text_ids: list[int]  # empty: nothing to say
    first: bool  # first spoken segment of the stream: finer chunks, higher splice threshold
    enqueued_ns: int


@dataclass
class _ActiveSegment:
    pending: _PendingSegment
    generator: torch.Generator
    cache: KVCache
    chunker: CodecChunker
    max_tokens: int
    next_token: int
    started_ns: int
    tokens_generated: int = 0
    finish_reason: str | None = None
    nar_prefill_ns: int = 0
    ar_ns: int = 0
    codec_ns: int = 0


@dataclass
class _Stream:
    stream_id: str
    seed: int
    on_event: EventCallback
    handle: _Handle
    queue: deque[_PendingSegment] = field(default_factory=deque)
    active: _ActiveSegment | None = None
    ended: bool = False


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


class SpeechEngine:
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
    ):
        """
        max_batch_size: segments decoded together; also the FIXED row count of every AR step (batch
            invariance), so on a CPU serving the full model keep it near the expected concurrency.
        first_chunk_tokens / chunk_tokens / context_tokens: spec §5.4 chunking (C = 20 for a stream's
            first spoken segment, 40 after; 10 tokens of context each side).
        codec_tokens_per_text_token, length_cap_base_tokens, max_codec_tokens: a segment stops after
            min(max_codec_tokens, per_text_token · n_text + base) codec tokens. The reference caps only at
            1000 (25 s); tying the cap to the text bounds a model that misses EOS to ~1 s past any
            plausible reading of the segment (see tts.max_codec_tokens_for).
        codec_batch_size: windows per codec call, padded with dummy windows (batch invariance); 1 on CPU.
        """
        if max_batch_size < 1 or codec_batch_size < 1:
            raise ValueError("max_batch_size and codec_batch_size must be ≥ 1")
        self._models = models
        self._tokenizer = tokenizer
        self._device = torch.device(device)
        self._max_batch_size = max_batch_size
        self._first_chunk_tokens = first_chunk_tokens
        self._chunk_tokens = chunk_tokens
        self._context_tokens = context_tokens
        self._per_text_token = codec_tokens_per_text_token
        self._max_codec_tokens = max_codec_tokens
        self._length_cap_base = length_cap_base_tokens
        self._codec_batch_size = codec_batch_size
        tts_dims = models.tts.dims
        self._banned_ids = banned_sample_ids(tts_dims)
        self._eos = eos_id(tts_dims)
        self._sos = sos_id(tts_dims)
        self._pad = pad_id(tts_dims)
        self._max_positions = tts_dims.max_position_embeddings
        self._frames_per_token = models.frames_per_text_token

        self._lock = threading.Lock()  # guards _handles, _commands, _running, _counters
        self._wakeup = threading.Condition(self._lock)
        self._handles: dict[str, _Handle] = {}
        self._commands: deque[Callable[[], None]] = deque()
        self._counters = _Counters()
        self._running = False
        self._thread: threading.Thread | None = None
        # Engine-thread state only.
        self._streams: dict[str, _Stream] = {}

    # ---------------------------------------------------------------- public API (any thread)

    def start(self) -> None:
        with self._lock:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._run, name="speech-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker; streams still open receive StreamFailedEvent(EngineStoppedError)."""
        with self._wakeup:
            if not self._running:
                return
            self._running = False
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def open_stream(self, stream_id: str, seed: int | None, on_event: EventCallback) -> None:
        stream_seed = seed if seed is not None else secrets.randbits(63)
        with self._wakeup:
            self._require_running()
            if stream_id in self._handles:
                raise DuplicateStreamError(f"speech stream {stream_id!r} is already open")
            handle = _Handle()
            self._handles[stream_id] = handle
            stream = _Stream(stream_id, stream_seed, on_event, handle)
            self._enqueue(lambda: self._on_open(stream))

    def push_segment(self, stream_id: str, text: str, segment_index: int) -> None:
        """Queue one text segment. Normalisation and tokenisation happen here (microseconds) so that a
        bad segment is refused synchronously, with an error the caller can act on."""
        enqueued_ns = time.perf_counter_ns()
        with self._wakeup:
            self._require_running()
            handle = self._open_handle(stream_id)
            if segment_index <= handle.last_segment_index:
                raise SegmentOrderError(
                    f"segment_index {segment_index} must exceed the previous one ({handle.last_segment_index})"
                )
            first = handle.spoken_segments == 0
            normalized = normalize_segment(text, first_segment=first)
            text_ids = [] if is_silent(normalized) else self._tokenizer.encode_text(normalized)
            if text_ids:
                self._check_length(len(text_ids))
                handle.spoken_segments += 1
            handle.last_segment_index = segment_index
            segment = _PendingSegment(segment_index, text_ids, first and bool(text_ids), enqueued_ns)
            self._enqueue(lambda: self._on_push(stream_id, segment))

    def end_stream(self, stream_id: str) -> None:
        """End drains: queued segments are still synthesised, then StreamDoneEvent("completed")."""
        with self._wakeup:
            self._require_running()
            handle = self._open_handle(stream_id)
            handle.closed = True
            self._enqueue(lambda: self._on_end(stream_id))

    def cancel_stream(self, stream_id: str) -> None:
        """Cancel drops: no AR step starts for it after this returns (at most the one in flight), no
        further audio is delivered, state is freed, then StreamDoneEvent("cancelled").
        Cancelling a stream that already finished is a no-op (cancel races with completion)."""
        with self._wakeup:
            handle = self._handles.get(stream_id)
            if handle is None or handle.cancel_requested:
                return
            handle.closed = True
            handle.cancel_requested = True
            self._enqueue(lambda: self._on_cancel(stream_id))

    def stats(self) -> SpeechStats:
        with self._lock:
            counters = self._counters
            streams = list(self._streams.values())
            return SpeechStats(
                open_streams=len(self._handles),
                decoding_segments=sum(1 for s in streams if s.active is not None),
                queued_segments=sum(len(s.queue) for s in streams),
                ar_steps=counters.ar_steps,
                ar_rows=counters.ar_rows,
                codec_calls=counters.codec_calls,
                codec_windows=counters.codec_windows,
                codec_tokens_generated=counters.codec_tokens_generated,
                audio_samples=counters.audio_samples,
                segments_completed=counters.segments_completed,
                streams_completed=counters.streams_completed,
                cancelled_total=counters.cancelled_total,
                failed_total=counters.failed_total,
            )

    # ---------------------------------------------------------------- caller-side helpers (lock held)

    def _require_running(self) -> None:
        if not self._running:
            raise EngineStoppedError("speech engine is not running")

    def _open_handle(self, stream_id: str) -> _Handle:
        handle = self._handles.get(stream_id)
        if handle is None:
            raise UnknownStreamError(f"no open speech stream {stream_id!r}")
        if handle.closed:
            raise StreamClosedError(f"speech stream {stream_id!r} was already ended or cancelled")
        return handle

    def _check_length(self, text_tokens: int) -> None:
        positions = self._frames_per_token * text_tokens + 1 + self._length_cap(text_tokens)
        if positions > self._max_positions:
            limit = max(
                n for n in range(1, self._max_positions)
                if self._frames_per_token * n + 1 + self._length_cap(n) <= self._max_positions
            )
            raise SegmentTooLongError(
                f"segment has {text_tokens} text tokens; at most {limit} fit the TTS context "
                f"({self._max_positions} positions): split the text at punctuation"
            )

    def _length_cap(self, text_tokens: int) -> int:
        return max_codec_tokens_for(
            text_tokens,
            per_text_token=self._per_text_token,
            base_tokens=self._length_cap_base,
            hard_cap=self._max_codec_tokens,
        )

    def _enqueue(self, command: Callable[[], None]) -> None:
        self._commands.append(command)
        self._wakeup.notify()

    # ---------------------------------------------------------------- commands (engine thread)

    def _on_open(self, stream: _Stream) -> None:
        with self._lock:  # stats() reads the dict from other threads
            self._streams[stream.stream_id] = stream

    def _on_push(self, stream_id: str, segment: _PendingSegment) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.queue.append(segment)

    def _on_end(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.ended = True

    def _on_cancel(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._forget(stream)
        with self._lock:
            self._counters.cancelled_total += 1
        self._deliver(stream, StreamDoneEvent(stream_id, "cancelled"))

    # ---------------------------------------------------------------- worker loop

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wakeup:
                    while self._running and not self._commands and not self._has_work():
                        self._wakeup.wait(IDLE_WAIT_S)
                    if not self._running:
                        break
                    commands = list(self._commands)
                    self._commands.clear()
                try:
                    for command in commands:
                        command()
                    self._iteration()
                except Exception as error:  # noqa: BLE001 - a bug must not kill the worker and hang everyone
                    log.exception("speech engine iteration failed")
                    for stream in list(self._streams.values()):
                        self._fail(stream, error)
            self._shutdown()

    def _has_work(self) -> bool:
        return any(s.active is not None or s.queue or s.ended for s in self._streams.values())

    def _iteration(self) -> None:
        self._start_segments()
        ready = self._ar_step()
        self._decode_windows(ready)
        self._finish_segments()

    def _shutdown(self) -> None:
        # Apply what was accepted before stop() (opens, cancels…) so every open stream gets a final event.
        with self._lock:
            commands = list(self._commands)
            self._commands.clear()
        for command in commands:
            command()
        for stream in list(self._streams.values()):
            self._fail(stream, EngineStoppedError("speech engine stopped"))

    # ---------------------------------------------------------------- phase 2: NAR + prefill

    def _start_segments(self) -> None:
        decoding = sum(1 for s in self._streams.values() if s.active is not None)
        waiting = [s for s in self._streams.values() if s.active is None and (s.queue or s.ended)]
        # Oldest queued segment first, so a burst of new streams cannot starve earlier ones.
        waiting.sort(key=lambda s: s.queue[0].enqueued_ns if s.queue else 0)
        for stream in waiting:
            while stream.active is None and stream.queue and stream.stream_id in self._streams:
                if not stream.queue[0].text_ids:
                    self._finish_silent(stream, stream.queue.popleft())
                    continue
                if decoding >= self._max_batch_size:
                    break
                segment = stream.queue.popleft()
                try:
                    stream.active = self._begin_segment(stream, segment)
                    decoding += 1
                except Exception as error:  # noqa: BLE001 - one bad segment fails its own stream only
                    self._fail(stream, error)
            if stream.stream_id in self._streams and stream.active is None and not stream.queue and stream.ended:
                self._complete(stream)

    def _begin_segment(self, stream: _Stream, segment: _PendingSegment) -> _ActiveSegment:
        started_ns = time.perf_counter_ns()
        tts = self._models.tts
        ids = torch.tensor(segment.text_ids, dtype=torch.long)
        rows = self._models.embed_table[ids]
        frames = text_frames(rows, tts.dims.hidden_size).to(self._device, dtype=tts.dtype)
        max_tokens = self._length_cap(len(segment.text_ids))
        cache = tts.new_cache(frames.shape[1] + 1 + max_tokens)
        tts.prefill(tts.pre_net(frames), cache)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)  # honest nar_prefill_ns
        first = segment.first
        chunker = CodecChunker(
            chunk_tokens=self._first_chunk_tokens if first else self._chunk_tokens,
            context_tokens=self._context_tokens,
            seg_threshold=FIRST_SEGMENT_SEG_THRESHOLD if first else SEG_THRESHOLD,
            hop_length=self._models.codec.hop_length,
        )
        generator = torch.Generator().manual_seed(segment_seed(stream.seed, segment.index))
        done_ns = time.perf_counter_ns()
        return _ActiveSegment(
            pending=segment,
            generator=generator,
            cache=cache,
            chunker=chunker,
            max_tokens=max_tokens,
            next_token=self._sos,
            started_ns=started_ns,
            nar_prefill_ns=done_ns - started_ns,
        )

    # ---------------------------------------------------------------- phase 3: one batched AR step

    def _ar_step(self) -> list[tuple[_Stream, CodecWindow]]:
        """Returns the codec windows that became ready, in issue order."""
        batch = [s for s in self._streams.values() if s.active is not None and s.active.finish_reason is None]
        ready: list[tuple[_Stream, CodecWindow]] = []
        if not batch:
            return ready
        rows = self._max_batch_size  # fixed shape: see "batch invariance" above
        tokens = torch.full((rows,), self._pad, dtype=torch.long)
        caches: list[KVCache | None] = [None] * rows
        for row, stream in enumerate(batch):
            tokens[row] = stream.active.next_token
            caches[row] = stream.active.cache
        started = time.perf_counter_ns()
        try:
            logits = self._models.tts.decode_step(tokens.to(self._device), caches).cpu()
        except Exception as error:  # noqa: BLE001 - the step failed for every row in it
            for stream in batch:
                self._fail(stream, error)
            return ready
        elapsed = time.perf_counter_ns() - started
        with self._lock:
            self._counters.ar_steps += 1
            self._counters.ar_rows += len(batch)
        for row, stream in enumerate(batch):
            segment = stream.active
            segment.ar_ns += elapsed
            try:
                token = sample_codec_token(logits[row], segment.generator, self._banned_ids)
                ready.extend((stream, window) for window in self._accept_token(segment, token))
            except Exception as error:  # noqa: BLE001 - isolate the stream
                self._fail(stream, error)
        return ready

    def _accept_token(self, segment: _ActiveSegment, token: int) -> list[CodecWindow]:
        windows: list[CodecWindow] = []
        if token == self._eos:
            segment.finish_reason = "eos"
        else:
            segment.tokens_generated += 1
            segment.next_token = token
            window = segment.chunker.push(token)
            if window is not None:
                windows.append(window)
            if segment.tokens_generated >= segment.max_tokens:
                segment.finish_reason = "length_cap"
        if segment.finish_reason is not None:
            final = segment.chunker.finish()
            if final is not None:
                windows.append(final)
        return windows

    # ---------------------------------------------------------------- phase 4: codec windows

    def _decode_windows(self, ready: list[tuple[_Stream, CodecWindow]]) -> None:
        if not ready:
            return
        decoded: dict[int, np.ndarray] = {}
        failed: set[str] = set()
        by_length: dict[int, list[tuple[_Stream, CodecWindow]]] = {}
        for item in ready:
            by_length.setdefault(item[1].tokens.shape[0], []).append(item)
        for length, items in by_length.items():
            for first in range(0, len(items), self._codec_batch_size):
                group = items[first : first + self._codec_batch_size]
                ids = np.zeros((self._codec_batch_size, length), dtype=np.int64)  # padding windows: id 0
                for slot, (_, window) in enumerate(group):
                    ids[slot] = window.tokens
                started = time.perf_counter_ns()
                try:
                    waves = self._models.codec(torch.from_numpy(ids).to(self._device)).float().cpu().numpy()
                except Exception as error:  # noqa: BLE001 - fail the streams of this call only
                    for stream, _ in group:
                        failed.add(stream.stream_id)
                        self._fail(stream, error)
                    continue
                elapsed = time.perf_counter_ns() - started
                with self._lock:
                    self._counters.codec_calls += 1
                    self._counters.codec_windows += len(group)
                for slot, (stream, window) in enumerate(group):
                    decoded[id(window)] = waves[slot]
                    if stream.active is not None:
                        stream.active.codec_ns += elapsed
        # Hand the waveforms back in issue order: a segment may have two windows of different lengths.
        for stream, window in ready:
            if stream.stream_id in failed or stream.active is None or self._streams.get(stream.stream_id) is not stream:
                continue
            segment = stream.active
            try:
                for chunk in segment.chunker.accept(window, decoded[id(window)]):
                    self._emit_audio(stream, segment.pending.index, chunk)
            except Exception as error:  # noqa: BLE001 - isolate the stream
                failed.add(stream.stream_id)
                self._fail(stream, error)

    def _emit_audio(self, stream: _Stream, segment_index: int, samples: np.ndarray) -> None:
        if stream.handle.cancel_requested or self._streams.get(stream.stream_id) is not stream:
            return
        pcm = float_to_pcm16(samples)
        with self._lock:
            self._counters.audio_samples += pcm.shape[0]
        self._deliver(stream, AudioEvent(stream.stream_id, segment_index, pcm))

    # ---------------------------------------------------------------- phase 5: segment / stream end

    def _finish_segments(self) -> None:
        for stream in list(self._streams.values()):
            segment = stream.active
            if segment is None or segment.finish_reason is None:
                continue
            # Audio still held back by the splice when no final window was needed (context_tokens = 0).
            tail = segment.chunker.flush_buffer()
            if tail is not None:
                self._emit_audio(stream, segment.pending.index, tail)
            if self._streams.get(stream.stream_id) is not stream:
                continue  # the consumer's callback failed the stream
            stream.active = None
            with self._lock:
                self._counters.segments_completed += 1
                self._counters.codec_tokens_generated += segment.tokens_generated
            pending = segment.pending
            self._deliver(
                stream,
                SegmentDoneEvent(
                    stream_id=stream.stream_id,
                    segment_index=pending.index,
                    codec_tokens=segment.tokens_generated,
                    finish_reason=segment.finish_reason,
                    text_tokens=len(pending.text_ids),
                    queue_ns=segment.started_ns - pending.enqueued_ns,
                    nar_prefill_ns=segment.nar_prefill_ns,
                    ar_ns=segment.ar_ns,
                    codec_ns=segment.codec_ns,
                ),
            )
            if self._streams.get(stream.stream_id) is stream and not stream.queue and stream.ended:
                self._complete(stream)

    def _finish_silent(self, stream: _Stream, segment: _PendingSegment) -> None:
        with self._lock:
            self._counters.segments_completed += 1
        now = time.perf_counter_ns()
        self._deliver(
            stream,
            SegmentDoneEvent(
                stream_id=stream.stream_id,
                segment_index=segment.index,
                codec_tokens=0,
                finish_reason="empty",
                text_tokens=0,
                queue_ns=now - segment.enqueued_ns,
                nar_prefill_ns=0,
                ar_ns=0,
                codec_ns=0,
            ),
        )

    def _complete(self, stream: _Stream) -> None:
        self._forget(stream)
        # A cancel that raced with the last segment wins: its audio was already suppressed.
        cancelled = stream.handle.cancel_requested
        with self._lock:
            if cancelled:
                self._counters.cancelled_total += 1
            else:
                self._counters.streams_completed += 1
        self._deliver(stream, StreamDoneEvent(stream.stream_id, "cancelled" if cancelled else "completed"))

    # ---------------------------------------------------------------- delivery and failure

    def _forget(self, stream: _Stream) -> None:
        """Free the stream's state (KV cache, chunker buffers) and its id."""
        stream.active = None
        stream.queue.clear()
        with self._lock:
            self._streams.pop(stream.stream_id, None)
            if self._handles.get(stream.stream_id) is stream.handle:
                del self._handles[stream.stream_id]

    def _deliver(self, stream: _Stream, event: SpeechEvent) -> None:
        if isinstance(event, (AudioEvent, SegmentDoneEvent)) and stream.handle.cancel_requested:
            return  # cancel drops: nothing more than the StreamDoneEvent after a cancel
        try:
            stream.on_event(event)
        except Exception as error:  # noqa: BLE001 - a broken consumer fails its own stream only
            if isinstance(event, (StreamDoneEvent, StreamFailedEvent)):
                log.exception("speech stream %s: event callback failed on its final event", stream.stream_id)
                return
            self._fail(stream, error)

    def _fail(self, stream: _Stream, error: Exception) -> None:
        if self._streams.get(stream.stream_id) is not stream:
            return  # already finished, cancelled or failed
        log.error("speech stream %s failed: %s", stream.stream_id, type(error).__name__, exc_info=error)
        self._forget(stream)
        with self._lock:
            self._counters.failed_total += 1
        self._deliver(stream, StreamFailedEvent(stream.stream_id, error))

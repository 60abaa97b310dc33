"""Chunked codec decoding of one segment (docs/MODEL.md#chunking; the reference's `llm2TTS.run`).

The chunker never runs the codec itself: `push` returns a `CodecWindow` (tokens to decode + which samples
to keep) when one is due, and `accept` takes the decoded waveform back. The engine can therefore decode
the windows of several streams in one generator call.

Windows (C = chunk tokens, P = context tokens = 10):
* first window: C + P tokens; keep the first C tokens' samples (no left context yet);
* then: P left context + C new + P look-ahead; keep the middle C tokens' samples;
* C is the reference's fixed 20 (a stream's first segment) or 40, or, with a growing `WindowSchedule`,
  grows with the audio the stream has already delivered (see there);
* at the end: the leftover (last 2P tokens + whatever came after), keep all but the left context
  (everything when no window was decoded yet).
Hard-cut overlap-save, no cross-fade; every generated token yields exactly `hop` samples in total.

Low-energy splice (`find_min_sum_index`): a kept chunk is emitted only up to its quietest point when
the second half has a 2401-sample stretch whose mean |x| is below the threshold; otherwise it is held
back and emitted with the next cut (or at the end). This only moves chunk boundaries: the concatenated
output is the same either way. A listener about to run dry gets the whole chunk at once (`hold=False`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

SPLICE_WINDOW_SAMPLES = 2401  # ≈100 ms box filter at 24 kHz
FIRST_SEGMENT_CHUNK_TOKENS = 20
CHUNK_TOKENS = 40
CONTEXT_TOKENS = 10
FIRST_SEGMENT_SEG_THRESHOLD = 0.1
SEG_THRESHOLD = 0.015
PCM16_SCALE = 32768.0
MAX_CHUNK_TOKENS = 80
CHUNK_GROWTH = 0.5
CHUNK_STEP_TOKENS = 10  # grown chunk sizes are multiples of this: few distinct codec shapes


@dataclass(frozen=True)
class WindowSchedule:
    """Chunk tokens (C) of each codec window.

    The reference cuts fixed chunks: 20 tokens in a stream's first segment, 40 after. The second window
    then needs 40 new tokens (plus a codec call) while the listener plays the first 20: below about 2.5x
    real time the first chunk runs out before the second arrives. Growing instead: the next window keeps
    `growth` x (tokens the stream's earlier windows kept, in this and earlier segments), at least
    `first_chunk_tokens`, at most `max_chunk_tokens`, rounded down to CHUNK_STEP_TOKENS. A stream that
    runs at r x real time has buffered about (1 - 1/r) of what it delivered, plus its first chunk, so with
    growth 0.5 the next window is ready in time down to r = 1.5; long windows later cost fewer context
    tokens per second of audio (20/C of the codec's work).

    The size depends only on the stream's own tokens, never on the load or the wall clock: the codec's
    receptive field (about +-13 tokens) is wider than the context, so the window cut changes the low bits
    of the audio, and a seeded stream must sound the same alone or beside others. growth = 0 is the
    reference.
    """

    first_chunk_tokens: int = FIRST_SEGMENT_CHUNK_TOKENS
    chunk_tokens: int = CHUNK_TOKENS
    growth: float = CHUNK_GROWTH
    max_chunk_tokens: int = MAX_CHUNK_TOKENS

    def __post_init__(self) -> None:
        if self.first_chunk_tokens <= 0 or self.chunk_tokens <= 0 or self.growth < 0:
            raise ValueError("chunk sizes must be > 0 and growth ≥ 0")
        if self.growth and self.max_chunk_tokens < self.first_chunk_tokens:
            raise ValueError("max_chunk_tokens must be ≥ first_chunk_tokens")

    def chunk_tokens_at(self, covered_tokens: int, first_segment: bool) -> int:
        """C of the window whose kept audio starts `covered_tokens` into the stream."""
        if not self.growth:
            return self.first_chunk_tokens if first_segment else self.chunk_tokens
        grown = int(self.growth * covered_tokens) // CHUNK_STEP_TOKENS * CHUNK_STEP_TOKENS
        return max(self.first_chunk_tokens, min(self.max_chunk_tokens, grown))


REFERENCE_WINDOWS = WindowSchedule(growth=0.0)


@dataclass(frozen=True)
class CodecWindow:
    """One codec call's worth of tokens and the sample range [keep_start, keep_end) to keep."""

    tokens: np.ndarray  # int64 [T]
    keep_start: int
    keep_end: int  # exclusive, in samples of the decoded window
    final: bool


def low_energy_cut(chunk: np.ndarray, window: int, threshold: float) -> int | None:
    """Cut index inside `chunk`, or None when its second half has no quiet stretch.

    Box filter of |x| (length `window`) over the second half; if the smallest mean is below
    `threshold`, return the quietest sample inside that box. The reference computes the box end from an
    already shifted start index (a slip that can look past the box); this cuts inside
    that box. Either way only the emission boundary moves, never the audio.
    """
    length = chunk.shape[0]
    if length < window:
        return None
    magnitude = np.abs(chunk.astype(np.float64))
    cumulative = np.concatenate(([0.0], np.cumsum(magnitude)))
    box_sums = cumulative[window:] - cumulative[:-window]  # box_sums[i] = sum |x[i : i+window]|
    first = max(0, length // 2 - window // 2)
    best = first + int(np.argmin(box_sums[first:]))
    if box_sums[best] / window >= threshold:
        return None
    return best + int(np.argmin(magnitude[best : best + window]))


# The reference holds audio back until it finds a quiet point to cut at, without limit. Speech with no
# pause (or the noise of random weights) would then arrive only at the end of the segment and the client
# would stall; we hold back at most one second (the length of a later-segment window at 40 tokens).
MAX_HOLD_SAMPLES = 24000


class CodecChunker:
    """Turns a segment's codec tokens, as they are sampled, into windows and spliced waveform chunks."""

    def __init__(
        self,
        *,
        chunk_tokens: int,
        context_tokens: int = CONTEXT_TOKENS,
        seg_threshold: float,
        hop_length: int,
        splice_window: int = SPLICE_WINDOW_SAMPLES,
        max_hold_samples: int = MAX_HOLD_SAMPLES,
        schedule: WindowSchedule | None = None,
        first_segment: bool = False,
        stream_tokens_before: int = 0,
    ):
        """`schedule`: window sizes (None: `chunk_tokens` for every window); `stream_tokens_before`: the
        codec tokens of the stream's earlier segments, which the schedule counts as delivered."""
        if chunk_tokens <= 0 or context_tokens < 0:
            raise ValueError("chunk_tokens must be > 0 and context_tokens ≥ 0")
        self.chunk_tokens = chunk_tokens
        self.schedule = schedule
        self.first_segment = first_segment
        self._covered = stream_tokens_before  # stream tokens kept by earlier windows
        self._plan_next_window()
        self.context_tokens = context_tokens
        self.seg_threshold = seg_threshold
        self.hop_length = hop_length
        self.splice_window = splice_window
        self.max_hold_samples = max_hold_samples
        self._tokens: list[int] = []  # not yet decoded past, incl. the kept context
        self._left_context = 0  # 0 until the first window is decoded
        self._pending: deque[CodecWindow] = deque()
        self._buffer = np.zeros(0, dtype=np.float32)  # held back by the splice
        self._finished = False
        self.tokens_pushed = 0
        self.samples_emitted = 0

    def _plan_next_window(self) -> None:
        if self.schedule is not None:
            self.chunk_tokens = self.schedule.chunk_tokens_at(self._covered, self.first_segment)

    @property
    def pending_windows(self) -> int:
        return len(self._pending)

    def push(self, token: int) -> CodecWindow | None:
        """Add one sampled codec token; returns a window when one is full."""
        if self._finished:
            raise RuntimeError("push after finish")
        self._tokens.append(token)
        self.tokens_pushed += 1
        needed = self._left_context + self.chunk_tokens + self.context_tokens
        if len(self._tokens) < needed:
            return None
        hop = self.hop_length
        window = CodecWindow(
            tokens=np.asarray(self._tokens, dtype=np.int64),
            keep_start=self._left_context * hop,
            keep_end=(len(self._tokens) - self.context_tokens) * hop,
            final=False,
        )
        self._covered += self.chunk_tokens
        self._plan_next_window()
        self._left_context = self.context_tokens
        keep = self._left_context + self.context_tokens
        self._tokens = self._tokens[len(self._tokens) - keep :] if keep else []
        self._pending.append(window)
        return window

    def finish(self) -> CodecWindow | None:
        """End of the segment: the window for the leftover tokens, or None when nothing is left."""
        if self._finished:
            raise RuntimeError("finish called twice")
        self._finished = True
        if len(self._tokens) <= self._left_context:
            # Nothing new after the last window (only possible with context_tokens = 0) or no tokens at all.
            return None
        window = CodecWindow(
            tokens=np.asarray(self._tokens, dtype=np.int64),
            keep_start=self._left_context * self.hop_length,
            keep_end=len(self._tokens) * self.hop_length,
            final=True,
        )
        self._tokens = []
        self._pending.append(window)
        return window

    def flush_buffer(self) -> np.ndarray | None:
        """After finish() returned None: the audio still held back by the splice (None if empty)."""
        if not self._finished or self._pending:
            raise RuntimeError("flush_buffer only after finish and once every window is accepted")
        return self._take_buffer()

    def accept(self, window: CodecWindow, waveform: np.ndarray, hold: bool = True) -> list[np.ndarray]:
        """Decoded samples of `window` (float, [hop·T]) → chunks ready to play (possibly none).
        hold=False: emit everything now (the listener is about to run dry; a click beats a stall)."""
        if not self._pending or self._pending[0] is not window:
            raise RuntimeError("windows must be accepted in the order they were issued")
        expected = window.tokens.shape[0] * self.hop_length
        if waveform.shape != (expected,):
            raise ValueError(f"decoded window has shape {waveform.shape}, expected ({expected},)")
        self._pending.popleft()
        kept = np.asarray(waveform[window.keep_start : window.keep_end], dtype=np.float32)
        if window.final or not hold:
            self._buffer = np.concatenate([self._buffer, kept])
            tail = self._take_buffer()
            return [tail] if tail is not None else []
        cut = low_energy_cut(kept, self.splice_window, self.seg_threshold)
        if cut is None:
            self._buffer = np.concatenate([self._buffer, kept])
            if self._buffer.size < self.max_hold_samples:
                return []
            # No quiet point for too long: emit anyway rather than starve the client's playback.
            return [self._take_buffer()]
        ready = np.concatenate([self._buffer, kept[:cut]])
        self._buffer = kept[cut:].copy()
        if ready.size == 0:
            return []
        self.samples_emitted += ready.size
        return [ready]

    def _take_buffer(self) -> np.ndarray | None:
        buffered, self._buffer = self._buffer, np.zeros(0, dtype=np.float32)
        if buffered.size == 0:
            return None
        self.samples_emitted += buffered.size
        return buffered


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """[-1, 1] float → int16 as the reference server does (×32768, truncation), clipped first:
    tanh can return exactly 1.0 in fp32, and 32768 would wrap to −32768 (a full-scale click)."""
    scaled = np.clip(np.asarray(samples, dtype=np.float32) * PCM16_SCALE, -PCM16_SCALE, PCM16_SCALE - 1)
    return scaled.astype(np.int16)

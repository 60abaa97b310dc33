"""Executes the speech scheduler's plan on the TTS model and the codec: NAR + prefill of a segment, the
batched AR decode step, per-row sampling, and codec calls.

Batch invariance: a seeded stream sounds the same alone or beside others. BLAS/oneDNN pick different
kernels for different batch sizes (a 1-row Linear is a GEMV, a 3-row one a GEMM, and the low bits differ;
measured here up to 1e-4 on the logits; likewise a 1-window conv takes another backend than a 2-window
one). A one-ULP change in a probability or a sample is enough to flip a sampled id or an int16 value. So
every batched call here has a FIXED shape, whatever the load:
* the AR step always runs the Linear layers on [max_rows, d], free rows zero-filled; with a fixed shape
  each row's result is independent of the other rows (checked: row position and neighbours do not change
  a bit). Decode is memory-bound, so the padding rows are nearly free;
* attention runs per stream over its own KV cache (no padded attention, whose reduction length would
  depend on the longest neighbour);
* NAR + prefill run per segment (shapes depend only on that segment);
* codec windows are decoded `codec_batch_size` at a time, padded with dummy windows of the same length.
  The codec is compute-bound, so padding is not free: 1 (the default) suits CPUs; accelerators with spare
  parallelism should use more.
Sampling happens on the CPU, per row, with the segment's own torch.Generator seeded from the stream seed
and the segment index, so a segment's audio depends on nothing but its text and seed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from services.speech.chunker import (
    CONTEXT_TOKENS,
    FIRST_SEGMENT_SEG_THRESHOLD,
    SEG_THRESHOLD,
    CodecChunker,
    CodecWindow,
    WindowSchedule,
)
from services.speech.streams import ActiveSegment, PendingSegment
from services.speech.tts import KVCache, banned_sample_ids, eos_id, pad_id, sample_codec_token, sos_id, text_frames
from services.speech.weights import SpeechModels


def segment_seed(stream_seed: int, segment_index: int) -> int:
    """Seed of one segment's sampler: a stable hash, so segments are independent of each other."""
    digest = hashlib.sha256(f"vita-speech:{stream_seed}:{segment_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class Chunking:
    """How a segment's codec tokens are cut into windows (see services.speech.chunker): a stream's first
    window is short, so its first audio comes sooner; later ones follow `windows`."""

    first_chunk_tokens: int = 20
    chunk_tokens: int = 40
    context_tokens: int = CONTEXT_TOKENS
    growth: float = 0.0  # 0: the reference's fixed chunks
    max_chunk_tokens: int = 80

    @property
    def windows(self) -> WindowSchedule:
        return WindowSchedule(self.first_chunk_tokens, self.chunk_tokens, self.growth, self.max_chunk_tokens)


class SpeechRunner:
    """The model side of the speech engine. Runs on the engine thread only; holds no stream state."""

    def __init__(
        self,
        models: SpeechModels,
        *,
        device: torch.device,
        max_rows: int,
        codec_batch_size: int,
        chunking: Chunking,
    ) -> None:
        self._models = models
        self._device = device
        self._max_rows = max_rows
        self._codec_batch_size = codec_batch_size
        self._chunking = chunking
        dims = models.tts.dims
        self._banned_ids = banned_sample_ids(dims)
        self._eos = eos_id(dims)
        self._sos = sos_id(dims)
        self._pad = pad_id(dims)

    @property
    def sample_rate_hz(self) -> int:
        return self._models.codec.sampling_rate

    def begin_segment(self, stream_seed: int, segment: PendingSegment, stream_tokens_before: int = 0) -> ActiveSegment:
        """Text ids → embedding rows → NAR pre-net → bidirectional prefill of a fresh KV cache.
        `stream_tokens_before`: codec tokens of the stream's earlier segments (window sizes grow with it)."""
        started_ns = time.perf_counter_ns()
        tts = self._models.tts
        ids = torch.tensor(segment.text_ids, dtype=torch.long)
        rows = self._models.embed_table[ids]
        frames = text_frames(rows, tts.dims.hidden_size).to(self._device, dtype=tts.dtype)
        max_tokens = segment.max_tokens
        cache = tts.new_cache(frames.shape[1] + 1 + max_tokens)
        tts.prefill(tts.pre_net(frames), cache)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)  # honest nar_prefill_ns
        chunking = self._chunking
        first = segment.first
        chunker = CodecChunker(
            chunk_tokens=chunking.first_chunk_tokens if first else chunking.chunk_tokens,
            context_tokens=chunking.context_tokens,
            seg_threshold=FIRST_SEGMENT_SEG_THRESHOLD if first else SEG_THRESHOLD,
            hop_length=self._models.codec.hop_length,
            schedule=chunking.windows,
            first_segment=first,
            stream_tokens_before=stream_tokens_before,
        )
        generator = torch.Generator().manual_seed(segment_seed(stream_seed, segment.index))
        return ActiveSegment(
            pending=segment,
            generator=generator,
            cache=cache,
            chunker=chunker,
            max_tokens=max_tokens,
            next_token=self._sos,
            started_ns=started_ns,
            nar_prefill_ns=time.perf_counter_ns() - started_ns,
        )

    def decode_step(self, segments: Sequence[ActiveSegment]) -> torch.Tensor:
        """One AR step for every segment: logits [max_rows, vocab] on the CPU, row i for segments[i]."""
        if len(segments) > self._max_rows:
            raise ValueError(f"{len(segments)} rows planned for an AR step of {self._max_rows}")
        tokens = torch.full((self._max_rows,), self._pad, dtype=torch.long)  # fixed shape, see above
        caches: list[KVCache | None] = [None] * self._max_rows
        for row, segment in enumerate(segments):
            tokens[row] = segment.next_token
            caches[row] = segment.cache
        return self._models.tts.decode_step(tokens.to(self._device), caches).cpu()

    def sample(self, segment: ActiveSegment, logits: torch.Tensor) -> list[CodecWindow]:
        """Samples the segment's next codec id from its row; returns the codec windows that became ready."""
        token = sample_codec_token(logits, segment.generator, self._banned_ids)
        return segment.accept_token(token, self._eos)

    def decode_windows(self, windows: Sequence[CodecWindow]) -> np.ndarray:
        """One codec call: waveforms [codec_batch_size, samples] (float32) of equal-length windows; the
        rows past len(windows) are padding."""
        if not 0 < len(windows) <= self._codec_batch_size:
            raise ValueError(f"{len(windows)} windows planned for a codec call of {self._codec_batch_size}")
        length = windows[0].tokens.shape[0]
        ids = np.zeros((self._codec_batch_size, length), dtype=np.int64)  # padding windows: id 0
        for slot, window in enumerate(windows):
            ids[slot] = window.tokens
        return self._models.codec(torch.from_numpy(ids).to(self._device)).float().cpu().numpy()

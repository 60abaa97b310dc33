"""What the audio engine and a stream share: an utterance's incremental encoder state (`PartialEncoding`),
filled by the stream's thread and advanced by the engine's, and what an encode returns."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from services.audio.encoder import WhaleAudioEncoder, fbank_span_of_rows, num_encoder_frames
from services.audio.features import NUM_MEL_BINS

_INITIAL_FRAME_CAPACITY = 512  # ~5 s of fbank; grows by doubling


class PartialEncoding:
    """The fbank frames of one utterance (appended by the stream's thread) and the subsampled rows the
    worker has computed from them so far. Frames are raw log-mel; CMVN happens in the model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames = np.empty((_INITIAL_FRAME_CAPACITY, NUM_MEL_BINS), dtype=np.float32)
        self._num_frames = 0
        self._rows: list[torch.Tensor] = []  # [k, d] blocks on the model's device
        self._num_rows = 0
        self.subsample_calls = 0
        self.subsample_ns = 0
        self.queued = False  # a subsample item for this utterance is waiting in the engine queue

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def num_rows(self) -> int:
        return self._num_rows

    def append_frames(self, frames: np.ndarray) -> None:
        if len(frames) == 0:
            return
        with self._lock:
            needed = self._num_frames + len(frames)
            if needed > len(self._frames):
                grown = np.empty((max(needed, 2 * len(self._frames)), NUM_MEL_BINS), dtype=np.float32)
                grown[: self._num_frames] = self._frames[: self._num_frames]
                self._frames = grown
            self._frames[self._num_frames : needed] = frames
            self._num_frames = needed

    def frames(self) -> np.ndarray:
        with self._lock:
            return self._frames[: self._num_frames].copy()

    def advance(self, model: WhaleAudioEncoder) -> int:
        """Computes every subsampled row the frames so far allow; returns how many were added.

        Only the worker thread calls this, so rows are never computed twice; the lock only guards the
        frame buffer against a concurrent append that reallocates it.
        """
        with self._lock:
            target = num_encoder_frames(self._num_frames)
            if target <= self._num_rows:
                return 0
            span = self._frames[fbank_span_of_rows(self._num_rows, target)].copy()
        started = time.perf_counter_ns()
        feats = torch.from_numpy(span).to(device=model.device, dtype=model.dtype).unsqueeze(0)
        rows = model.subsample(feats)[0]
        added = target - self._num_rows
        if rows.size(0) != added:
            raise AssertionError(f"subsampling produced {rows.size(0)} rows, expected {added}")
        self._rows.append(rows)
        self._num_rows = target
        self.subsample_calls += 1
        self.subsample_ns += time.perf_counter_ns() - started
        return added

    def rows(self) -> torch.Tensor:
        return torch.cat(self._rows, dim=0)


@dataclass(frozen=True)
class EncodeTiming:
    queue_ns: int  # from `encode()` to the worker picking the item up
    compute_ns: int  # final subsampling rows + transformer + adapter (this item's batch)
    eos_subsample_ns: int  # the part of compute_ns spent subsampling frames that arrived last
    batch_size: int


@dataclass
class EncodeResult:
    embeddings: torch.Tensor  # [L, llm_hidden], CPU
    timing: EncodeTiming
    ready_ns: int  # perf_counter_ns when the embeddings were ready

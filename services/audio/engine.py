"""Runs the audio encoder off the caller's thread, on the engine loop (shared.engine_loop): its one worker
thread owns all model compute.

Work items:
* subsampling of a stream's utterance while the user speaks (`schedule_subsample`, coalesced: at most one
  queued item per stream, and it covers every frame that arrived meanwhile);
* final encodes (`encode`): the remaining subsampling rows of a stream's utterance (or the whole
  subsampling of a raw [T, 80] clip) followed by the transformer + adapter.

Each step takes everything queued until the step boundary: final encodes go first (they are what a user
waits for), batched up to `max_batch_size` per forward pass (padded with a key mask; equal to unbatched
within 1e-5, tested), then the subsampling items. Results are CPU tensors, so a servicer can serialise
them without touching the device.

VAD, resampling and fbank are cheap per-stream CPU work (~0.3 ms of Silero per 32 ms window, ~1% of a
core per stream) done in the thread that calls `AudioStream.push`; an asyncio servicer calls it through
`asyncio.to_thread` (or a small executor) so the event loop never runs it. Those threads are pinned to one
torch intra-op thread by the VAD (see `vad`); the worker uses `intra_op_threads`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from services.audio.encoder import MIN_FBANK_FRAMES, WhaleAudioEncoder, num_encoder_frames, num_llm_tokens
from services.audio.encoding import EncodeResult, EncodeTiming, PartialEncoding
from services.audio.features import NUM_MEL_BINS, AudioTooShortError, PcmEncoding
from services.audio.stream import AudioStream
from services.audio.vad import SileroVad, VadConfig
from shared import engine_loop
from shared.engine_loop import EngineLoop, LoopStats

logger = logging.getLogger(__name__)


class EngineStoppedError(engine_loop.EngineStoppedError):
    """The engine is not running (not started yet, or stopped)."""


@dataclass(frozen=True)
class AudioEngineStats:
    running: bool
    queue_depth: int
    utterances_encoded: int
    batches_run: int
    largest_batch: int
    subsample_items: int
    encode_compute_ns: int
    subsample_compute_ns: int
    failures: int
    loop: LoopStats = field(default_factory=LoopStats)  # the worker loop's own counters


@dataclass
class _EncodeItem:
    source: torch.Tensor | PartialEncoding  # raw fbank [T, 80] or a stream's utterance
    future: Future[EncodeResult]
    enqueued_ns: int


@dataclass
class _SubsampleItem:
    partial: PartialEncoding


@dataclass
class _Barrier:
    done: Future[None]


_Item = _EncodeItem | _SubsampleItem | _Barrier


def _embeddings_only(inner: Future[EncodeResult]) -> Future[torch.Tensor]:
    outer: Future[torch.Tensor] = Future()

    def _chain(done: Future[EncodeResult]) -> None:
        error = done.exception()
        if error is not None:
            outer.set_exception(error)
        else:
            outer.set_result(done.result().embeddings)

    inner.add_done_callback(_chain)
    return outer


class AudioEngine(EngineLoop):
    """The audio service's model runtime: one encoder, one worker thread, one shared VAD network."""

    stopped_error = EngineStoppedError

    def __init__(
        self,
        encoder: WhaleAudioEncoder,
        *,
        device: str | torch.device,
        max_batch_size: int = 8,
        vad: SileroVad | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        """`intra_op_threads`: torch CPU threads of the worker; default: the constructing thread's count
        (threads that run VAD are pinned to 1, see `vad`, so construct the engine before using VAD in
        the same thread, or pass the count)."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be ≥ 1, got {max_batch_size}")
        super().__init__(name="audio")
        self.intra_op_threads = intra_op_threads or torch.get_num_threads()
        self.encoder = encoder.to(device)
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.vad = vad if vad is not None else SileroVad.load()
        self._pending: list[_Item] = []  # engine thread: taken by the next step
        self._in_step: list[_Item] = []  # engine thread: what a failing step must answer
        # Written by the engine thread only; read by stats().
        self._utterances_encoded = 0
        self._batches_run = 0
        self._largest_batch = 0
        self._subsample_items = 0
        self._encode_compute_ns = 0
        self._subsample_compute_ns = 0
        self._failures = 0

    def stop(self, timeout_s: float | None = 10.0) -> None:
        """Finishes the items already queued, then stops the worker."""
        super().stop(timeout_s)

    # --- API -----------------------------------------------------------------------------------------

    def encode(self, features: torch.Tensor | np.ndarray | PartialEncoding) -> Future[torch.Tensor]:
        """Embeddings [L, llm_hidden] (CPU) of raw fbank [T, 80] or of a stream's finished utterance."""
        return _embeddings_only(self.encode_timed(features))

    def encode_timed(self, features: torch.Tensor | np.ndarray | PartialEncoding) -> Future[EncodeResult]:
        """Like `encode`, with queue/compute timings and the ready timestamp."""
        item = self._encode_item(features)
        self.post(lambda: self._pending.append(item))
        return item.future

    def encode_many(self, clips: list[torch.Tensor | np.ndarray | PartialEncoding]) -> list[Future[torch.Tensor]]:
        """Several clips queued as one unit, so the worker batches them together (e.g. re-encoding
        history); each future is the clip's [L, llm_hidden] embeddings."""
        items = [self._encode_item(clip) for clip in clips]
        self.post(lambda: self._pending.extend(items))
        return [_embeddings_only(item.future) for item in items]

    def _encode_item(self, features: torch.Tensor | np.ndarray | PartialEncoding) -> _EncodeItem:
        if isinstance(features, np.ndarray):
            features = torch.from_numpy(features)
        if isinstance(features, torch.Tensor) and (features.dim() != 2 or features.size(1) != NUM_MEL_BINS):
            raise ValueError(f"features must be [T, {NUM_MEL_BINS}], got {tuple(features.shape)}")
        num_frames = features.num_frames if isinstance(features, PartialEncoding) else features.size(0)
        if num_frames < MIN_FBANK_FRAMES:
            raise AudioTooShortError(
                f"audio is too short to encode: {num_frames} fbank frames, at least {MIN_FBANK_FRAMES} "
                f"needed (85 ms at 16 kHz)"
            )
        return _EncodeItem(features, Future(), time.perf_counter_ns())

    def schedule_subsample(self, partial: PartialEncoding) -> None:
        """Asks the worker to subsample the frames that arrived; a no-op if a request is already queued."""
        if partial.queued or num_encoder_frames(partial.num_frames) <= partial.num_rows:
            return
        partial.queued = True
        item = _SubsampleItem(partial)
        self.post(lambda: self._pending.append(item))

    def wait_idle(self, timeout: float | None = None) -> None:
        """Blocks until everything queued before this call has been processed (benchmarks, drains)."""
        barrier = _Barrier(Future())
        self.post(lambda: self._pending.append(barrier))
        barrier.done.result(timeout)

    def new_stream(
        self,
        config: VadConfig,
        sample_rate_hz: int,
        encoding: PcmEncoding | str,
        vad_enabled: bool = True,
    ) -> AudioStream:
        return AudioStream(self, config, sample_rate_hz=sample_rate_hz, encoding=encoding, vad_enabled=vad_enabled)

    def stats(self) -> AudioEngineStats:
        loop = self.loop_stats()
        return AudioEngineStats(
            running=loop.running,
            queue_depth=loop.inbox_depth + len(self._pending),
            utterances_encoded=self._utterances_encoded,
            batches_run=self._batches_run,
            largest_batch=self._largest_batch,
            subsample_items=self._subsample_items,
            encode_compute_ns=self._encode_compute_ns,
            subsample_compute_ns=self._subsample_compute_ns,
            failures=self._failures,
            loop=loop,
        )

    # --- loop hooks (engine thread) ------------------------------------------------------------------

    @contextlib.contextmanager
    def worker_context(self) -> Iterator[None]:
        # Per thread with torch's OpenMP backend; set explicitly so the VAD threads' 1 never leaks in.
        torch.set_num_threads(self.intra_op_threads)
        with torch.inference_mode():
            yield

    def has_work(self) -> bool:
        return bool(self._pending)

    def step(self) -> None:
        items, self._pending = self._pending, []
        self._in_step = items
        self._run_encodes([item for item in items if isinstance(item, _EncodeItem)])
        for item in items:
            if isinstance(item, _SubsampleItem):
                self._run_subsample(item)
        for item in items:
            if isinstance(item, _Barrier):
                item.done.set_result(None)
        self._in_step = []

    def on_step_error(self, error: Exception) -> None:
        # Answer whatever the failed step left unanswered, so no caller waits forever.
        items, self._in_step = self._in_step, []
        for item in items:
            if isinstance(item, _SubsampleItem):
                item.partial.queued = False
            elif isinstance(item, _EncodeItem) and not item.future.done():
                self._fail(item, error)
            elif isinstance(item, _Barrier) and not item.done.done():
                item.done.set_exception(error)

    def on_stop(self) -> None:
        # Items queued before stop() are finished, not failed: their callers are still waiting.
        while self.has_work():
            self._step_or_answer()

    def _step_or_answer(self) -> None:
        try:
            self.step()
        except Exception as error:  # noqa: BLE001 - a failed step still answers its callers
            logger.exception("audio engine: a step failed while stopping")
            self.on_step_error(error)

    # --- work ----------------------------------------------------------------------------------------

    def _run_subsample(self, item: _SubsampleItem) -> None:
        item.partial.queued = False
        before = item.partial.subsample_ns
        try:
            item.partial.advance(self.encoder)
        except Exception:  # the final encode of this utterance will retry and report the error
            self._failures += 1
            logger.exception("incremental subsampling failed")
        self._subsample_items += 1
        self._subsample_compute_ns += item.partial.subsample_ns - before

    def _run_encodes(self, items: list[_EncodeItem]) -> None:
        if not items:
            return
        picked_ns = time.perf_counter_ns()
        prepared: list[tuple[_EncodeItem, torch.Tensor, int]] = []  # item, rows [T1, d], subsample ns
        for item in items:
            try:
                rows, subsample_ns = self._rows_of(item.source)
            except Exception as err:  # reported to the one caller whose input failed
                self._fail(item, err)
                continue
            prepared.append((item, rows, subsample_ns))
        # Similar lengths share a batch, so little compute goes to padding.
        prepared.sort(key=lambda entry: entry[1].size(0))
        for begin in range(0, len(prepared), self.max_batch_size):
            self._run_batch(prepared[begin : begin + self.max_batch_size], picked_ns)

    def _rows_of(self, source: torch.Tensor | PartialEncoding) -> tuple[torch.Tensor, int]:
        """Subsampled rows [T1, d] of an item and the subsampling time spent now, in ns."""
        if isinstance(source, PartialEncoding):
            before = source.subsample_ns
            source.advance(self.encoder)  # only the frames that arrived since the last advance
            return source.rows(), source.subsample_ns - before
        started = time.perf_counter_ns()
        feats = source.to(device=self.device, dtype=self.encoder.dtype).unsqueeze(0)
        rows = self.encoder.subsample(feats)[0]
        return rows, time.perf_counter_ns() - started

    def _run_batch(self, batch: list[tuple[_EncodeItem, torch.Tensor, int]], picked_ns: int) -> None:
        started = time.perf_counter_ns()
        try:
            lengths = torch.tensor([rows.size(0) for _, rows, _ in batch], dtype=torch.long)
            padded = torch.nn.utils.rnn.pad_sequence([rows for _, rows, _ in batch], batch_first=True)
            embeddings = self.encoder.encode_subsampled(padded, lengths if len(batch) > 1 else None)
            outputs = [embeddings[i, : num_llm_tokens(int(n))].to("cpu") for i, n in enumerate(lengths)]
        except Exception as err:  # a failed forward fails every utterance in it, never the worker
            for item, _, _ in batch:
                self._fail(item, err)
            return
        ready_ns = time.perf_counter_ns()
        batch_ns = ready_ns - started
        self._batches_run += 1
        self._largest_batch = max(self._largest_batch, len(batch))
        self._encode_compute_ns += batch_ns
        for (item, _, subsample_ns), output in zip(batch, outputs):
            self._utterances_encoded += 1
            timing = EncodeTiming(
                queue_ns=picked_ns - item.enqueued_ns,
                compute_ns=subsample_ns + batch_ns,
                eos_subsample_ns=subsample_ns,
                batch_size=len(batch),
            )
            item.future.set_result(EncodeResult(output, timing, ready_ns))

    def _fail(self, item: _EncodeItem, err: Exception) -> None:
        self._failures += 1
        if not isinstance(err, ValueError):
            logger.error("audio encode failed", exc_info=err)
        item.future.set_exception(err)

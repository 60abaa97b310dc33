"""The EncodeClip RPC: a whole clip (raw PCM or an audio file) in, its embeddings out. Size and length
limits are checked before decoding where the request allows it; decoding, resampling and fbank run on a
feature thread, the encode on the engine."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np
import soundfile

from services.audio import metrics
from services.audio.config import AudioSettings
from services.audio.encoding import EncodeResult
from services.audio.engine import AudioEngine, EngineStoppedError
from services.audio.events import samples_to_ms
from services.audio.features import (
    AudioInputError,
    AudioTooShortError,
    clip_for_encoding,
    decode_audio_file,
    decode_pcm,
    resample_to_model_rate,
)
from services.audio.rpc.futures import awaitable
from services.audio.rpc.messages import INTERNAL_MESSAGE, UNAVAILABLE_MESSAGE, pcm16_bytes, stage_timing
from services.audio.stream import MIN_ENCODABLE_SAMPLES
from services.audio.rpc.validation import RequestRejected, sample_rate, stream_encoding
from shared.settings import MiB
from shared.tensors import to_proto
from vita.audio.v1 import audio_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_ENCODABLE_MS = samples_to_ms(MIN_ENCODABLE_SAMPLES)  # 85 ms


class ClipTooLongError(AudioInputError):
    """An EncodeClip clip over the server's limit (VITA_AUDIO_MAX_UTTERANCE_LIMIT_MS)."""


@dataclass(frozen=True)
class _Clip:
    pcm16k: np.ndarray
    fbank: np.ndarray
    waited_ns: int
    compute_ns: int


class EncodeClipHandler:
    """Serves EncodeClip calls."""

    def __init__(self, engine: AudioEngine, features: ThreadPoolExecutor, settings: AudioSettings) -> None:
        self._engine = engine
        self._features = features
        self._settings = settings

    async def encode(self, request, context) -> audio_pb2.EncodeClipResponse:
        """The whole call, once the servicer has checked that the models are loaded."""
        outcome: str | None = "cancelled"
        try:
            try:
                clip = await self._prepare_clip(request)
                result: EncodeResult = await awaitable(self._engine.encode_timed(clip.fbank))
            except (RequestRejected, AudioInputError) as error:
                outcome = "invalid"
                code, message = grpc.StatusCode.INVALID_ARGUMENT, getattr(error, "message", str(error))
            except EngineStoppedError:
                outcome = "unavailable"
                code, message = grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE
            except asyncio.CancelledError:
                raise
            except Exception:
                outcome = "failed"
                log.exception("EncodeClip failed for session %s", request.ctx.session_id)
                code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
            else:
                code = None
            if code is not None:
                # Counted before the reply, so that the count is there when the caller sees the error.
                metrics.CLIPS.labels(outcome).inc()
                outcome = None
                await context.abort(code, message)
            metrics.FEATURE_SECONDS.observe(clip.compute_ns / 1e9)
            metrics.ENCODE_SECONDS.labels("clip").observe(result.timing.compute_ns / 1e9)
            metrics.ENCODE_QUEUE_SECONDS.labels("clip").observe(result.timing.queue_ns / 1e9)
            outcome = "ok"
            return audio_pb2.EncodeClipResponse(
                embeddings=to_proto(result.embeddings),
                duration_ms=round(samples_to_ms(len(clip.pcm16k))),
                pcm16k=pcm16_bytes(clip.pcm16k),
                timings=[
                    stage_timing("audio.features", clip.waited_ns, clip.compute_ns),
                    stage_timing("audio.encode", result.timing.queue_ns, result.timing.compute_ns),
                ],
            )
        finally:
            if outcome is not None:
                metrics.CLIPS.labels(outcome).inc()

    async def _prepare_clip(self, request: audio_pb2.EncodeClipRequest) -> _Clip:
        """Checks the request, then decodes, resamples and computes fbank on a feature thread."""
        if not request.ctx.session_id:
            raise RequestRejected("ctx.session_id is required")
        kind = request.WhichOneof("audio")
        if kind is None:
            raise RequestRejected("no audio: set `pcm` (raw samples described by `format`) or `file` (WAV, FLAC or OGG)")
        data = request.pcm if kind == "pcm" else request.file
        limit_bytes = self._settings.max_clip_bytes
        if len(data) > limit_bytes:
            raise RequestRejected(f"the clip has {len(data) / MiB:.1f} MiB; the limit is {limit_bytes / MiB:g} MiB")
        limit_ms = self._settings.max_utterance_limit_ms
        if kind == "pcm":
            rate, encoding = sample_rate(request.format), stream_encoding(request.format)
            seconds = len(data) / encoding.bytes_per_sample / rate
            if seconds * 1000 > limit_ms:
                raise _too_long(seconds * 1000, limit_ms)

            def to_16k() -> np.ndarray:
                return resample_to_model_rate(decode_pcm(data, encoding), rate)
        else:
            def to_16k() -> np.ndarray:
                declared_ms = _declared_file_ms(data)
                if declared_ms is not None and declared_ms > limit_ms:
                    raise _too_long(declared_ms, limit_ms)
                return decode_audio_file(data)

        def prepare(queued_ns: int) -> _Clip:
            started = time.perf_counter_ns()
            samples = to_16k()
            duration_ms = samples_to_ms(len(samples))
            if duration_ms > limit_ms:
                raise _too_long(duration_ms, limit_ms)
            if len(samples) < MIN_ENCODABLE_SAMPLES:
                raise AudioTooShortError(
                    f"the clip is {duration_ms:.0f} ms long; at least {MIN_ENCODABLE_MS:.0f} ms of audio is needed"
                )
            pcm16k, fbank = clip_for_encoding(samples)
            return _Clip(pcm16k, fbank, started - queued_ns, time.perf_counter_ns() - started)

        return await self._in_feature_thread(prepare, time.perf_counter_ns())

    async def _in_feature_thread(self, function: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._features, function, *args)


def _too_long(duration_ms: float, limit_ms: int) -> ClipTooLongError:
    return ClipTooLongError(
        f"the clip is {duration_ms / 1000:.1f} s long; the limit is {limit_ms / 1000:g} s per clip"
    )


def _declared_file_ms(data: bytes) -> float | None:
    """The length a file's header announces, so a huge file is refused before it is decoded; None when
    the header cannot tell (decoding then reports what is wrong with the file)."""
    try:
        info = soundfile.info(io.BytesIO(data))
    except (RuntimeError, ValueError, EOFError):  # unreadable: decode_audio_file gives the user-facing reason
        return None
    if info.samplerate <= 0 or info.frames <= 0:
        return None
    return info.frames * 1000.0 / info.samplerate

"""The fake audio service: vita.audio.v1.Audio with an energy VAD and zero embeddings.

Utterances end on a commit (push-to-talk) or, with VAD on, after min_silence_ms of silence; each is
"encoded" in audio_encode_ms + audio_encode_ms_per_s × its length and answered with [rows, hidden_size]
float32 zeros at 12.5 rows per second, plus its 16 kHz PCM, as the real service does.
"""

from __future__ import annotations

import asyncio
import io
import math
import time

import grpc
import numpy as np
import soundfile
from pydantic import ValidationError

from apps.fakes.config import FakeSettings
from apps.fakes.pacing import Slots
from shared.grpc_server import LoadingGate
from shared.presets import get_preset
from shared.session_settings import VadSettings, describe
from vita.audio.v1 import audio_pb2, audio_pb2_grpc
from vita.common.v1 import common_pb2

MODEL_RATE_HZ = 16_000
ROWS_PER_SECOND = 12.5
MIN_ENCODABLE_MS = 85
# A chunk whose mean |sample| is above this (of full scale) counts as speech.
SPEECH_LEVEL = 0.01
MIN_RATE_HZ, MAX_RATE_HZ = 8_000, 192_000


def to_float(data: bytes, encoding: int) -> np.ndarray:
    if encoding == audio_pb2.SAMPLE_ENCODING_F32:
        return np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4").astype(np.float32)
    return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0


def to_model_rate(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    if rate_hz == MODEL_RATE_HZ or samples.size == 0:
        return samples
    length = max(1, round(samples.size * MODEL_RATE_HZ / rate_hz))
    return np.interp(np.linspace(0, samples.size - 1, length), np.arange(samples.size), samples).astype(np.float32)


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


class FakeAudio(audio_pb2_grpc.AudioServicer, LoadingGate):
    def __init__(self, settings: FakeSettings, preset: str):
        self._settings = settings
        self._hidden = get_preset(preset).llm.hidden_size
        self._slots = Slots(settings.encoder_max_concurrent)
        self._weights = common_pb2.WeightsInfo(source="fake", name=preset, dtype="none", device="none")

    async def Describe(self, request, context):
        await self.require_loaded(context)
        return audio_pb2.DescribeResponse(hidden_size=self._hidden, tokens_per_second=ROWS_PER_SECOND,
                                          weights=self._weights)

    async def _encode(self, samples16k: np.ndarray) -> tuple[common_pb2.Tensor, list[common_pb2.StageTiming]]:
        seconds = samples16k.size / MODEL_RATE_HZ
        async with self._slots.hold() as queue_ns:
            compute_s = (self._settings.audio_encode_ms + self._settings.audio_encode_ms_per_s * seconds) / 1000
            await asyncio.sleep(compute_s)
        rows = max(1, math.ceil(seconds * ROWS_PER_SECOND))
        tensor = common_pb2.Tensor(dtype="float32", shape=[rows, self._hidden], data=bytes(4 * rows * self._hidden))
        timing = common_pb2.StageTiming(stage="audio.encoder", queue_ns=queue_ns, compute_ns=int(compute_s * 1e9))
        return tensor, [timing]

    async def EncodeClip(self, request, context):
        await self.require_loaded(context)
        kind = request.WhichOneof("audio")
        if kind == "file":
            try:
                samples, rate = soundfile.read(io.BytesIO(request.file), dtype="float32", always_2d=True)
            except (RuntimeError, soundfile.LibsndfileError):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the audio file could not be decoded (WAV, FLAC or OGG)")
            samples = samples.mean(axis=1)
        elif kind == "pcm":
            rate = request.format.sample_rate_hz
            if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"sample_rate_hz must be between {MIN_RATE_HZ} and {MAX_RATE_HZ}")
            samples = to_float(request.pcm, request.format.encoding)
        else:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set `pcm` or `file`")
        samples16k = to_model_rate(samples, rate)
        duration_ms = samples16k.size * 1000 // MODEL_RATE_HZ
        if duration_ms < MIN_ENCODABLE_MS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the clip is {duration_ms} ms; at least {MIN_ENCODABLE_MS} ms are needed")
        tensor, timings = await self._encode(samples16k)
        return audio_pb2.EncodeClipResponse(embeddings=tensor, duration_ms=duration_ms, pcm16k=pcm16(samples16k),
                                            timings=timings)

    async def StreamAudio(self, request_iterator, context):
        await self.require_loaded(context)
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before its start message")
        if first.WhichOneof("msg") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `start`")
        start = first.start
        rate = start.format.sample_rate_hz
        if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"sample_rate_hz must be between {MIN_RATE_HZ} and {MAX_RATE_HZ}")
        fields = {field.name: value for field, value in start.vad.ListFields()}
        fields["enabled"] = start.vad.enabled  # a plain bool: unset means off
        try:
            vad = VadSettings(**fields)
        except ValidationError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, describe(error))
        stream = _Utterances(self, start.format.encoding, rate, vad)
        async for message in request_iterator:
            kind = message.WhichOneof("msg")
            if kind == "chunk":
                for event in await stream.add(message.chunk.data):
                    yield event
            elif kind == "commit":
                yield await stream.finish(commit=True)
            else:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "`start` may only be the first message")
        if stream.in_progress:
            yield await stream.finish(commit=False)


class _Utterances:
    """One audio stream's state: the utterance being collected and, with VAD, where speech is."""

    def __init__(self, service: FakeAudio, encoding: int, rate_hz: int, vad: VadSettings):
        self._service = service
        self._encoding = encoding
        self._rate_hz = rate_hz
        self._vad = vad
        self._pending: list[np.ndarray] = []
        self._position_ms = 0.0
        self._speaking = False
        self._silence_ms = 0.0
        self._index = 0

    @property
    def in_progress(self) -> bool:
        return bool(self._pending)

    async def add(self, data: bytes) -> list[audio_pb2.AudioOutput]:
        samples = to_model_rate(to_float(data, self._encoding), self._rate_hz)
        chunk_ms = samples.size * 1000 / MODEL_RATE_HZ
        self._position_ms += chunk_ms
        if not self._vad.enabled:
            self._pending.append(samples)
            return []
        loud = samples.size > 0 and float(np.abs(samples).mean()) > SPEECH_LEVEL
        events = []
        if loud and not self._speaking:
            self._speaking, self._silence_ms = True, 0.0
            events.append(audio_pb2.AudioOutput(speech_started=audio_pb2.SpeechStarted(
                offset_ms=int(self._position_ms - chunk_ms))))
        if self._speaking:
            self._pending.append(samples)
            self._silence_ms = 0.0 if loud else self._silence_ms + chunk_ms
            if self._silence_ms >= self._vad.min_silence_ms:
                events.append(audio_pb2.AudioOutput(speech_stopped=audio_pb2.SpeechStopped(
                    offset_ms=int(self._position_ms))))
                events.append(await self.finish(commit=False))
        return events

    def _dropped(self, reason: int, duration_ms: float) -> audio_pb2.AudioOutput:
        return audio_pb2.AudioOutput(dropped=audio_pb2.UtteranceDropped(reason=reason, duration_ms=int(duration_ms)))

    async def finish(self, commit: bool) -> audio_pb2.AudioOutput:
        """Ends the utterance in progress: its embeddings, or why it was dropped."""
        ended = time.perf_counter_ns()
        samples = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
        self._pending, self._speaking, self._silence_ms = [], False, 0.0
        duration_ms = samples.size * 1000 / MODEL_RATE_HZ
        if samples.size == 0:
            return self._dropped(audio_pb2.DROP_REASON_EMPTY, 0)
        shortest = MIN_ENCODABLE_MS if not self._vad.enabled else self._vad.min_utterance_ms
        if duration_ms < shortest:
            return self._dropped(audio_pb2.DROP_REASON_TOO_SHORT, duration_ms)
        tensor, timings = await self._service._encode(samples)
        index, self._index = self._index, self._index + 1
        return audio_pb2.AudioOutput(utterance=audio_pb2.Utterance(
            index=index, embeddings=tensor, pcm16k=pcm16(samples), duration_ms=int(duration_ms),
            eos_to_ready_ns=time.perf_counter_ns() - ended, timings=timings))

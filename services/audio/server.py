"""gRPC servicer of the audio service: PCM streams in → VAD events and utterance embeddings out; whole clips
→ embeddings. Protobuf ↔ `services.audio.stream` / `engine` only; no model code here.

StreamAudio, one call per client conversation:
* A reader task takes the client's messages in order. Each chunk / commit runs `AudioStream.push` /
  `commit` on the feature threads (VAD, resampling, fbank are CPU work; the event loop never runs them)
  and appends the events it returns to the call's event queue, then reads the next message. It never
  waits for an encode, so audio intake goes on while an utterance is being encoded.
* The response loop sends the queued events in order. At a `SpeechStopped` that carries an utterance
  future it sends the stop, then awaits the future and sends the `Utterance` before any later event:
  every utterance follows its speech_stopped and precedes whatever the client said next.
* Client half-close = "end drains": the utterance in progress is finished and encoded, everything queued
  is sent, then the response stream ends (OK). Client cancel = "cancel drops": the utterance in progress
  is dropped and the stream forgotten; an encode already running completes and is discarded. (gRPC may
  report a cancel to the reader as the end of input just before it cancels the call; the flush that
  starts then is wasted work, its utterance counted as cancelled.)
* Bad audio ends the call with INVALID_ARGUMENT after the events queued before it, with a message that
  names the chunk and what to fix. A too-long utterance is not an error here: it arrives as
  speech_stopped + dropped{reason: "too_long"} and the stream goes on (the orchestrator reports it).

Status codes (DESIGN rule 8): bad input INVALID_ARGUMENT; too many open streams RESOURCE_EXHAUSTED
(retry later or elsewhere); engine stopped or models still loading UNAVAILABLE; anything else INTERNAL
with a generic message, details in the log only.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

import grpc
import numpy as np
import soundfile

from services.audio import metrics
from services.audio.config import AudioSettings
from services.audio.encoder import LLM_TOKEN_RATE_HZ
from services.audio.engine import AudioEngine, EncodeResult, EngineStoppedError
from services.audio.features import (
    AudioInputError,
    AudioTooShortError,
    PcmEncoding,
    clip_for_encoding,
    decode_audio_file,
    decode_pcm,
    resample_to_model_rate,
    validate_sample_rate,
)
from services.audio.stream import (
    MIN_ENCODABLE_SAMPLES,
    AudioEvent,
    AudioStream,
    SpeechStarted,
    SpeechStopped,
    StageTiming,
    UtteranceDropped,
    UtteranceReady,
    samples_to_ms,
)
from services.audio.vad import VadConfig
from services.audio.weights import load_audio_encoder
from shared.grpc_server import EngineApp, LoadingGate
from shared.presets import get_preset
from shared.settings import MiB, ServiceSettings, resolve_device, resolve_dtype
from shared.tensors import to_proto
from shared.weights_info import weights_info
from vita.audio.v1 import audio_pb2, audio_pb2_grpc
from vita.common.v1 import common_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")

UNAVAILABLE_MESSAGE = "the audio service is shutting down; retry"
INTERNAL_MESSAGE = "audio processing failed inside the audio service"
MIN_ENCODABLE_MS = samples_to_ms(MIN_ENCODABLE_SAMPLES)  # 85 ms
_ENCODINGS = {
    audio_pb2.SAMPLE_ENCODING_PCM16: PcmEncoding.PCM16,
    audio_pb2.SAMPLE_ENCODING_F32: PcmEncoding.F32,
}
_ENCODING_HINT = "use SAMPLE_ENCODING_PCM16 (signed 16-bit little-endian) or SAMPLE_ENCODING_F32 (float32 in [-1, 1])"


class _Rejected(Exception):
    """A request check failed before any work: INVALID_ARGUMENT with this message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClipTooLongError(AudioInputError):
    """An EncodeClip clip over the server's limit (VITA_AUDIO_MAX_UTTERANCE_LIMIT_MS)."""


@dataclass(frozen=True)
class _Abort:
    """Put on a stream's event queue by its reader: the response loop ends the call with this status."""

    code: grpc.StatusCode
    message: str
    outcome: str


_END = object()  # the client half-closed and every event is queued


@dataclass(frozen=True)
class _Clip:
    pcm16k: np.ndarray
    fbank: np.ndarray
    waited_ns: int
    compute_ns: int


def _timing(stage: str, queue_ns: int = 0, compute_ns: int = 0) -> common_pb2.StageTiming:
    return common_pb2.StageTiming(stage=stage, queue_ns=queue_ns, compute_ns=compute_ns)


def _timings(timings: tuple[StageTiming, ...]) -> list[common_pb2.StageTiming]:
    return [_timing(t.stage, t.queue_ns, t.compute_ns) for t in timings]


def _pcm16_bytes(pcm16k: np.ndarray) -> bytes:
    return pcm16k.astype("<i2", copy=False).tobytes()


def _awaitable(future: Future[T]) -> asyncio.Future[T]:
    """An asyncio view of an engine future. Unlike `asyncio.wrap_future`, cancelling the view (a client
    cancel) leaves the engine's future alone: the engine still resolves it, and nobody listens."""
    loop = asyncio.get_running_loop()
    view: asyncio.Future[T] = loop.create_future()

    def copy_state(done: Future[T]) -> None:
        if view.done():
            return
        if done.cancelled():
            view.cancel()
            return
        error = done.exception()
        if error is not None:
            view.set_exception(error)
        else:
            view.set_result(done.result())

    def resolved(done: Future[T]) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(copy_state, done)

    future.add_done_callback(resolved)
    return view


def _stream_encoding(fmt: audio_pb2.AudioFormat) -> PcmEncoding:
    encoding = _ENCODINGS.get(fmt.encoding)
    if encoding is not None:
        return encoding
    if fmt.encoding == audio_pb2.SAMPLE_ENCODING_UNSPECIFIED:
        raise _Rejected(f"format.encoding is missing; {_ENCODING_HINT}")
    raise _Rejected(f"format.encoding {fmt.encoding} is not a known sample encoding; {_ENCODING_HINT}")


def _sample_rate(fmt: audio_pb2.AudioFormat) -> int:
    try:
        return validate_sample_rate(fmt.sample_rate_hz)
    except AudioInputError as error:
        raise _Rejected(f"format.sample_rate_hz: {error}") from None


def _count_unsent(events: list[AudioEvent], drops_counted: bool = False) -> None:
    """Metrics for events of a call that ended before they could be sent."""
    for event in events:
        if isinstance(event, SpeechStopped) and event.utterance is not None:
            metrics.UTTERANCES.labels("cancelled").inc()  # flushed or encoded for nobody
        elif isinstance(event, UtteranceDropped) and not drops_counted:
            metrics.UTTERANCES.labels(event.reason.value).inc()


def _count_unsent_result(done: Future[list[AudioEvent]]) -> None:
    if not done.cancelled() and done.exception() is None:
        _count_unsent(done.result())


class _StreamCall:
    """One StreamAudio call: its stream, the events waiting to be sent, and what ending it early must undo.

    Stream work runs on the feature threads, one call at a time per stream (the reader awaits each).
    `close()` ("cancel drops") marks the call closed so that work not started yet is skipped; work already
    running finishes under the stream's lock, then `stream.cancel()` drops the utterance in progress.
    """

    def __init__(self, stream: AudioStream, features: ThreadPoolExecutor) -> None:
        self.stream = stream
        self.events: asyncio.Queue[AudioEvent | _Abort | object] = asyncio.Queue()
        self._features = features
        self._closed = False  # written on the event loop, read on feature threads

    async def run(self, function: Callable[..., list[AudioEvent]], *args) -> list[AudioEvent]:
        def unless_closed() -> list[AudioEvent]:
            return [] if self._closed else function(*args)

        future = self._features.submit(unless_closed)
        try:
            return await _awaitable(future)
        except asyncio.CancelledError:
            # The call ended while the work ran: it finishes, and its events are never sent.
            future.add_done_callback(_count_unsent_result)
            raise

    def queue(self, new_events: list[AudioEvent]) -> None:
        for event in new_events:
            if isinstance(event, UtteranceDropped):
                metrics.UTTERANCES.labels(event.reason.value).inc()
            self.events.put_nowait(event)

    def close(self) -> None:
        """The call ended without draining (client cancel, error): drop everything of this stream."""
        self._closed = True
        while not self.events.empty():
            _count_unsent([self.events.get_nowait()], drops_counted=True)
        try:
            # On a feature thread: a push still running holds the stream's lock; nothing waits for this.
            self._features.submit(lambda: _count_unsent(self.stream.cancel()))
        except RuntimeError:  # the pool is shut down (service stopping): the stream goes with the process
            log.debug("feature pool closed; stream state left to the garbage collector")


class AudioServicer(audio_pb2_grpc.AudioServicer, LoadingGate):
    """Registered before the models load (health says NOT_SERVING meanwhile); `attach` opens it."""

    def attach(self, engine: AudioEngine, features: ThreadPoolExecutor, settings: AudioSettings,
               hidden_size: int, weights: common_pb2.WeightsInfo) -> None:
        self._engine = engine
        self._features = features
        self._settings = settings
        self._hidden_size = hidden_size
        self._weights = weights
        self._streams: dict[str, AudioStream] = {}
        self.open()

    @property
    def open_streams(self) -> int:
        return len(self._streams) if self._loaded else 0

    async def Describe(self, request, context):
        await self.require_loaded(context)
        return audio_pb2.DescribeResponse(
            hidden_size=self._hidden_size, tokens_per_second=LLM_TOKEN_RATE_HZ, weights=self._weights
        )

    # --------------------------------------------------------------------------------------- streaming

    async def StreamAudio(self, request_iterator, context):
        await self.require_loaded(context)
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before its `start` message")
        if first.WhichOneof("msg") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `start`")
        start = first.start
        try:
            stream = self._open_stream(start)
        except (_Rejected, AudioInputError) as error:
            metrics.STREAMS.labels("invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, getattr(error, "message", str(error)))
        if len(self._streams) >= self._settings.max_streams:
            metrics.STREAMS.labels("rejected").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this audio server has its limit of {self._settings.max_streams} open streams; retry later",
            )

        stream_id = f"{start.ctx.session_id}/{uuid.uuid4().hex[:8]}"
        call = _StreamCall(stream, self._features)
        self._streams[stream_id] = stream
        metrics.ACTIVE_STREAMS.inc()
        log.debug("audio stream %s opened (%d Hz %s, vad %s)", stream_id, stream.sample_rate_hz,
                  stream.encoding.value, stream.vad_enabled)
        reader = asyncio.create_task(self._read_input(request_iterator, call, stream_id))
        outcome = "cancelled"
        in_hand: SpeechStopped | None = None  # taken from the queue, its utterance not yet handed to gRPC
        try:
            while True:
                item = await call.events.get()
                if item is _END:
                    outcome = "completed"
                    return
                if isinstance(item, _Abort):
                    outcome = item.outcome
                    await context.abort(item.code, item.message)
                if isinstance(item, SpeechStopped) and item.utterance is not None:
                    in_hand = item
                yield self._event_message(item)
                if in_hand is not None:
                    # Later events wait in the queue (the reader keeps taking audio meanwhile).
                    try:
                        ready = await _awaitable(in_hand.utterance)
                    except EngineStoppedError:
                        outcome = "unavailable"
                        await context.abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        outcome = "failed"
                        log.exception("encoding utterance %d of stream %s failed", in_hand.utterance_index, stream_id)
                        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
                    in_hand = None
                    yield self._utterance_message(ready)
        finally:
            reader.cancel()
            del self._streams[stream_id]
            metrics.ACTIVE_STREAMS.dec()
            metrics.STREAMS.labels(outcome).inc()
            log.debug("audio stream %s closed: %s", stream_id, outcome)
            if in_hand is not None:
                metrics.UTTERANCES.labels("cancelled" if outcome == "cancelled" else "failed").inc()
            if outcome != "completed":
                call.close()

    def _open_stream(self, start: audio_pb2.StreamStart) -> AudioStream:
        if not start.ctx.session_id:
            raise _Rejected("start.ctx.session_id is required")
        rate = _sample_rate(start.format)
        encoding = _stream_encoding(start.format)
        config = self._vad_config(start.vad)
        return self._engine.new_stream(config, rate, encoding, vad_enabled=start.vad.enabled)

    def _vad_config(self, vad: audio_pb2.VadConfig) -> VadConfig:
        """The stream's VAD settings, validated by the shared session settings (VadConfigError names the
        field). An unset field takes the shared default; an unset max_utterance_ms at most this server's
        limit. float32 fields are rounded back to what the client wrote."""
        chosen = {
            field.name: round(value, 6) if isinstance(value, float) else value for field, value in vad.ListFields()
        }
        chosen["enabled"] = vad.enabled
        limit = self._settings.max_utterance_limit_ms
        chosen.setdefault("max_utterance_ms", min(VadConfig.model_fields["max_utterance_ms"].default, limit))
        config = VadConfig(**chosen)
        if config.max_utterance_ms > limit:
            raise _Rejected(f"vad.max_utterance_ms {config.max_utterance_ms} exceeds this server's limit of {limit} ms")
        return config

    async def _read_input(self, request_iterator, call: _StreamCall, stream_id: str) -> None:
        """Feeds the client's messages to the stream in order and queues the resulting events."""
        stream = call.stream
        bytes_per_second = stream.sample_rate_hz * stream.encoding.bytes_per_sample
        max_chunk_bytes = bytes_per_second * self._settings.max_chunk_ms // 1000
        chunk_index = 0
        received_bytes = 0
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("msg")
                if kind == "chunk":
                    data = message.chunk.data
                    where = f"audio chunk {chunk_index} ({received_bytes / bytes_per_second:.2f} s into the stream)"
                    if len(data) > max_chunk_bytes:
                        raise _Rejected(
                            f"{where} has {len(data)} bytes; at most {max_chunk_bytes} bytes "
                            f"({self._settings.max_chunk_ms} ms of {stream.encoding.value} at {stream.sample_rate_hz} Hz) "
                            f"per chunk; send 20-100 ms chunks"
                        )
                    received = time.perf_counter()
                    try:
                        call.queue(await call.run(stream.push, data))
                    except AudioInputError as error:
                        raise _Rejected(f"{where}: {error}") from None
                    metrics.VAD_LAG_SECONDS.observe(time.perf_counter() - received)
                    metrics.AUDIO_SECONDS.inc(len(data) / bytes_per_second)
                    chunk_index += 1
                    received_bytes += len(data)
                elif kind == "commit":
                    call.queue(await call.run(stream.commit))
                elif kind == "start":
                    raise _Rejected("`start` may only be the first message of a stream")
                else:
                    raise _Rejected("an AudioInput message must set `chunk` or `commit`")
            # The client half-closed: "end drains" (the utterance in progress is finished and encoded).
            # A client cancel can also end the request stream just before the call is cancelled; then
            # `call.close()` has either run already (this is a no-op) or drops what this flushed.
            call.queue(await call.run(stream.end_of_input))
            call.events.put_nowait(_END)
        except _Rejected as error:
            call.events.put_nowait(_Abort(grpc.StatusCode.INVALID_ARGUMENT, error.message, "invalid"))
        except EngineStoppedError:
            call.events.put_nowait(_Abort(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE, "unavailable"))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("audio stream %s failed", stream_id)
            call.events.put_nowait(_Abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, "failed"))


    async def _in_feature_thread(self, function: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._features, function, *args)

    @staticmethod
    def _event_message(event: AudioEvent) -> audio_pb2.AudioOutput:
        if isinstance(event, SpeechStarted):
            return audio_pb2.AudioOutput(speech_started=audio_pb2.SpeechStarted(offset_ms=round(event.offset_ms)))
        if isinstance(event, SpeechStopped):
            return audio_pb2.AudioOutput(speech_stopped=audio_pb2.SpeechStopped(offset_ms=round(event.offset_ms)))
        if isinstance(event, UtteranceDropped):
            return audio_pb2.AudioOutput(
                dropped=audio_pb2.UtteranceDropped(
                    reason=audio_pb2.DropReason.Value(f"DROP_REASON_{event.reason.name}"),
                    duration_ms=round(event.duration_ms),
                )
            )
        raise TypeError(f"unexpected stream event {type(event).__name__}")

    @staticmethod
    def _utterance_message(ready: UtteranceReady) -> audio_pb2.AudioOutput:
        metrics.UTTERANCES.labels("ready").inc()
        metrics.EOS_TO_READY_SECONDS.observe(ready.eos_to_ready_ns / 1e9)
        for timing in ready.timings:
            if timing.stage == "audio.encode":
                metrics.ENCODE_SECONDS.labels("stream").observe(timing.compute_ns / 1e9)
                metrics.ENCODE_QUEUE_SECONDS.labels("stream").observe(timing.queue_ns / 1e9)
        return audio_pb2.AudioOutput(
            utterance=audio_pb2.Utterance(
                index=ready.utterance_index,
                embeddings=to_proto(ready.embeddings),
                pcm16k=_pcm16_bytes(ready.pcm16k),
                duration_ms=round(ready.duration_ms),
                eos_to_ready_ns=ready.eos_to_ready_ns,
                timings=_timings(ready.timings),
            )
        )

    # ------------------------------------------------------------------------------------------ clips

    async def EncodeClip(self, request, context):
        await self.require_loaded(context)
        outcome: str | None = "cancelled"
        try:
            try:
                clip = await self._prepare_clip(request)
                result: EncodeResult = await _awaitable(self._engine.encode_timed(clip.fbank))
            except (_Rejected, AudioInputError) as error:
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
                pcm16k=_pcm16_bytes(clip.pcm16k),
                timings=[
                    _timing("audio.features", clip.waited_ns, clip.compute_ns),
                    _timing("audio.encode", result.timing.queue_ns, result.timing.compute_ns),
                ],
            )
        finally:
            if outcome is not None:
                metrics.CLIPS.labels(outcome).inc()

    async def _prepare_clip(self, request: audio_pb2.EncodeClipRequest) -> _Clip:
        """Checks the request, then decodes, resamples and computes fbank on a feature thread."""
        if not request.ctx.session_id:
            raise _Rejected("ctx.session_id is required")
        kind = request.WhichOneof("audio")
        if kind is None:
            raise _Rejected("no audio: set `pcm` (raw samples described by `format`) or `file` (WAV, FLAC or OGG)")
        data = request.pcm if kind == "pcm" else request.file
        limit_bytes = self._settings.max_clip_bytes
        if len(data) > limit_bytes:
            raise _Rejected(f"the clip has {len(data) / MiB:.1f} MiB; the limit is {limit_bytes / MiB:g} MiB")
        limit_ms = self._settings.max_utterance_limit_ms
        if kind == "pcm":
            rate, encoding = _sample_rate(request.format), _stream_encoding(request.format)
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


def build_engine(common: ServiceSettings, settings: AudioSettings) -> tuple[AudioEngine, dict]:
    """Loads the encoder and the Silero VAD and builds the engine (also used by in-process benchmarks)."""
    preset = get_preset(common.preset)
    device = resolve_device(common.device)
    dtype = resolve_dtype(common.dtype, device)
    encoder = load_audio_encoder(
        preset.audio, seed=preset.init_seed, device=device, dtype=dtype, checkpoint_dir=common.checkpoint
    )
    engine = AudioEngine(
        encoder,
        device=device,
        max_batch_size=settings.max_batch_size,
        intra_op_threads=common.torch_threads or None,
    )
    facts = dict(
        hidden_size=encoder.dims.llm_hidden,  # a checkpoint's own width, else the preset's
        weights=weights_info(common.preset, common.checkpoint, dtype, device),
    )
    return engine, facts


class AudioApp(EngineApp):
    name = "audio"
    metrics = metrics.RPC
    service = audio_pb2.DESCRIPTOR.services_by_name["Audio"]
    add_servicer = staticmethod(audio_pb2_grpc.add_AudioServicer_to_server)

    def __init__(self, common: ServiceSettings, settings: AudioSettings):
        super().__init__(common, settings, AudioServicer())

    def start(self) -> None:
        engine, facts = build_engine(self.common, self.settings)
        engine.start()
        self.engine = engine
        features = self.pool(self.settings.feature_threads, "audio-features")
        self.servicer.attach(engine, features, self.settings, **facts)

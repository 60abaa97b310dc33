"""gRPC servicer of the speech service: a bidi stream of text segments in, PCM chunks out."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import grpc

from services.speech import metrics
from services.speech.config import SpeechSettings
from services.speech.engine import (
    AudioEvent,
    SegmentDoneEvent,
    SpeechBusyError,
    SpeechEngine,
    SpeechEngineError,
    StreamDoneEvent,
    StreamFailedEvent,
)
from services.speech.weights import load_speech_models
from shared.checkpoint.layout import checkpoint_tokenizer
from shared.aio_bridge import EngineEvents
from shared.grpc_server import EngineApp, LoadingGate
from shared.presets import get_preset
from shared.retry_hint import abort_exhausted
from shared.settings import ServiceSettings, resolve_device, resolve_dtype
from shared.tokenizer import QwenTokenizer
from shared.weights_info import weights_info
from vita.common.v1 import common_pb2
from vita.speech.v1 import speech_pb2, speech_pb2_grpc

log = logging.getLogger(__name__)


class _BadRequest:
    """Put on the event queue by the request reader so the response loop aborts with this message."""

    def __init__(self, message: str):
        self.message = message


class _Busy:
    """Put on the event queue by the request reader: admission control refused a segment."""

    def __init__(self, error: SpeechBusyError):
        self.error = error


def _timings(event: SegmentDoneEvent) -> list[common_pb2.StageTiming]:
    return [
        common_pb2.StageTiming(stage="speech.queue", queue_ns=event.queue_ns),
        common_pb2.StageTiming(stage="speech.nar_prefill", compute_ns=event.nar_prefill_ns),
        common_pb2.StageTiming(stage="speech.ar", compute_ns=event.ar_ns),
        common_pb2.StageTiming(stage="speech.codec", compute_ns=event.codec_ns),
    ]


class SpeechServicer(speech_pb2_grpc.SpeechServicer, LoadingGate):
    def attach(self, engine: SpeechEngine, settings: SpeechSettings, sample_rate_hz: int,
               samples_per_token: int, weights: common_pb2.WeightsInfo) -> None:
        self._engine = engine
        self._settings = settings
        self._sample_rate_hz = sample_rate_hz
        self._samples_per_token = samples_per_token
        self._weights = weights
        self.open()

    async def Describe(self, request, context):
        await self.require_loaded(context)
        return speech_pb2.DescribeResponse(
            sample_rate_hz=self._sample_rate_hz, samples_per_token=self._samples_per_token, weights=self._weights
        )

    async def Synthesize(self, request_iterator, context):
        await self.require_loaded(context)
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before its start message")
        if first.WhichOneof("msg") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `start`")
        ctx = first.start.ctx
        stream_id = f"{ctx.session_id}/{ctx.turn_id}/{uuid.uuid4().hex[:8]}"
        events: EngineEvents = EngineEvents()
        try:
            self._engine.open_stream(stream_id, ctx.seed if ctx.HasField("seed") else None, events.push)
        except SpeechBusyError as busy:
            metrics.STREAMS.labels("refused").inc()
            await abort_exhausted(context, str(busy), busy.retry_after_ms)
        metrics.ACTIVE_STREAMS.inc()
        opened = time.perf_counter()
        first_chunk_seen = False
        reader = asyncio.create_task(self._read_segments(request_iterator, stream_id, events))
        outcome = "cancelled"
        try:
            while True:
                event = await events.get()
                if isinstance(event, AudioEvent):
                    if not first_chunk_seen:
                        first_chunk_seen = True
                        metrics.FIRST_CHUNK_SECONDS.observe(time.perf_counter() - opened)
                    metrics.AUDIO_SECONDS.inc(len(event.pcm) / self._sample_rate_hz)
                    yield speech_pb2.SynthesizeResponse(
                        audio=speech_pb2.AudioChunk(
                            pcm=event.pcm.astype("<i2", copy=False).tobytes(),
                            sample_rate_hz=self._sample_rate_hz,
                            segment_index=event.segment_index,
                        )
                    )
                elif isinstance(event, SegmentDoneEvent):
                    self._observe(event)
                    yield speech_pb2.SynthesizeResponse(
                        segment_done=speech_pb2.SegmentDone(
                            segment_index=event.segment_index,
                            codec_tokens=event.codec_tokens,
                            finish_reason=speech_pb2.SegmentFinishReason.Value(
                                f"SEGMENT_FINISH_REASON_{event.finish_reason.upper()}"
                            ),
                            text_tokens=event.text_tokens,
                            timings=_timings(event),
                        )
                    )
                elif isinstance(event, StreamDoneEvent):
                    outcome = event.reason
                    reason = speech_pb2.SynthesisEndReason.Value(f"SYNTHESIS_END_REASON_{event.reason.upper()}")
                    yield speech_pb2.SynthesizeResponse(done=speech_pb2.SynthesisDone(reason=reason))
                    return
                elif isinstance(event, StreamFailedEvent):
                    outcome = "failed"
                    log.error("synthesis failed: %r", event.error)
                    await context.abort(grpc.StatusCode.INTERNAL, "synthesis failed inside the speech engine")
                elif isinstance(event, _BadRequest):
                    outcome = "invalid"
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, event.message)
                elif isinstance(event, _Busy):
                    outcome = "refused"
                    await abort_exhausted(context, str(event.error), event.error.retry_after_ms)
        finally:
            reader.cancel()
            if outcome not in ("completed",):
                # Cancel drops: queued segments and the running AR loop stop within one step.
                self._engine.cancel_stream(stream_id)
            metrics.ACTIVE_STREAMS.dec()
            metrics.STREAMS.labels(outcome).inc()

    async def _read_segments(self, request_iterator, stream_id: str, events: EngineEvents) -> None:
        expected_index = 0
        async for message in request_iterator:
            kind = message.WhichOneof("msg")
            if kind == "position":
                if message.position.played_ms < 0:
                    events.push(_BadRequest(f"position.played_ms must be ≥ 0, got {message.position.played_ms}"))
                    return
                self._engine.report_playback(stream_id, message.position.played_ms)
                continue
            if kind != "segment":
                events.push(_BadRequest("only `segment` and `position` messages may follow `start`"))
                return
            segment = message.segment
            if segment.index != expected_index:
                events.push(_BadRequest(f"segment index {segment.index} out of order; expected {expected_index}"))
                return
            if len(segment.text) > self._settings.max_segment_chars:
                events.push(_BadRequest(
                    f"segment {segment.index} has {len(segment.text)} characters; the limit is {self._settings.max_segment_chars}"
                ))
                return
            try:
                self._engine.push_segment(stream_id, segment.text, segment.index)
            except SpeechBusyError as busy:
                events.push(_Busy(busy))
                return
            except SpeechEngineError as error:
                events.push(_BadRequest(f"segment {segment.index} refused: {error}"))
                return
            expected_index += 1
        # The client half-closed: "end" drains what is queued.
        self._engine.end_stream(stream_id)

    @staticmethod
    def _observe(event: SegmentDoneEvent) -> None:
        metrics.SEGMENTS.labels(event.finish_reason).inc()
        metrics.CODEC_TOKENS.inc(event.codec_tokens)
        metrics.QUEUE_SECONDS.observe(event.queue_ns / 1e9)
        metrics.STAGE_SECONDS.labels("nar_prefill").observe(event.nar_prefill_ns / 1e9)
        metrics.STAGE_SECONDS.labels("ar").observe(event.ar_ns / 1e9)
        metrics.STAGE_SECONDS.labels("codec").observe(event.codec_ns / 1e9)


def build_engine(common: ServiceSettings, settings: SpeechSettings) -> tuple[SpeechEngine, dict]:
    """Loads the TTS models and builds the engine (also used by the in-process benchmark)."""
    preset = get_preset(common.preset)
    device = resolve_device(common.device)
    dtype = resolve_dtype(common.dtype, device)
    models = load_speech_models(
        preset.tts, preset.codec, preset.llm, seed=preset.init_seed, device=device, dtype=dtype,
        checkpoint_dir=common.checkpoint,
    )
    if common.checkpoint:
        tokenizer = checkpoint_tokenizer(common.checkpoint, embedding_rows=models.embed_table.shape[0])
    else:
        tokenizer = QwenTokenizer.from_dir()
    engine = SpeechEngine(
        models,
        tokenizer,
        device=device,
        max_batch_size=settings.max_batch_size,
        first_chunk_tokens=settings.first_chunk_tokens,
        chunk_tokens=settings.chunk_tokens,
        context_tokens=settings.context_tokens,
        codec_tokens_per_text_token=settings.codec_tokens_per_text_token,
        max_codec_tokens=settings.max_codec_tokens,
        codec_batch_size=settings.codec_batch_size,
        max_open_streams=settings.max_open_streams,
        max_queued_segments=settings.max_queued_segments,
        busy_retry_after_ms=settings.busy_retry_after_ms,
        chunk_growth=settings.chunk_growth,
        max_chunk_tokens=settings.max_chunk_tokens,
        yield_buffer_ms=settings.yield_buffer_ms or None,
        first_chunk_yield_ms=settings.first_chunk_yield_ms or None,
        splice_hold_buffer_ms=settings.splice_hold_buffer_ms,
    )
    facts = dict(
        # The codec's own dims: the checkpoint's when one is served.
        sample_rate_hz=models.codec.dims.sampling_rate,
        samples_per_token=models.codec.hop_length,
        weights=weights_info(common.preset, common.checkpoint, dtype, device),
    )
    return engine, facts


class SpeechApp(EngineApp):
    name = "speech"
    metrics = metrics.RPC
    service = speech_pb2.DESCRIPTOR.services_by_name["Speech"]
    add_servicer = staticmethod(speech_pb2_grpc.add_SpeechServicer_to_server)

    def __init__(self, common: ServiceSettings, settings: SpeechSettings):
        super().__init__(common, settings, SpeechServicer())

    def start(self) -> None:
        engine, facts = build_engine(self.common, self.settings)
        engine.start()
        metrics.watch_engine(engine.stats)
        self.engine = engine
        self.servicer.attach(engine, self.settings, **facts)

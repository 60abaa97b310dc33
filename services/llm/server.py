"""gRPC servicer of the LLM: protobuf ↔ engine requests, text deltas, timings. No model code here."""

from __future__ import annotations

import logging
import uuid

import grpc
from services.llm import metrics
from services.llm.config import LLMSettings
from services.llm.engine import (
    EngineBusy,
    EngineStopped,
    EmbeddingSegment,
    FailedEvent,
    FinishedEvent,
    GenerationRequest,
    LLMEngine,
    MissingMediaRows,
    TokenEvent,
    TokenSegment,
)
from services.llm.weights import load_llm
from shared.checkpoint.layout import checkpoint_tokenizer
from shared.aio_bridge import EngineEvents
from shared.grpc_server import EngineApp, LoadingGate
from shared.presets import get_preset
from shared.retry_hint import abort_exhausted
from shared.settings import ServiceSettings, resolve_device, resolve_dtype
from shared.tensors import TensorDecodeError, from_proto
from shared.tokenizer import QwenTokenizer
from shared.weights_info import weights_info
from vita.common.v1 import common_pb2
from vita.llm.v1 import llm_pb2, llm_pb2_grpc

log = logging.getLogger(__name__)


class InvalidSegments(ValueError):
    pass


def segments_from_proto(messages, hidden_size: int) -> list[TokenSegment | EmbeddingSegment]:
    segments: list[TokenSegment | EmbeddingSegment] = []
    for position, message in enumerate(messages):
        kind = message.WhichOneof("kind")
        if kind == "tokens":
            segments.append(TokenSegment(ids=tuple(message.tokens.ids)))
        elif kind == "embeddings":
            span = message.embeddings
            rows = None
            if span.HasField("rows") and span.rows.data:
                try:
                    rows = from_proto(span.rows)
                except TensorDecodeError as exc:
                    raise InvalidSegments(f"segment {position}: {exc}") from None
                if rows.dim() != 2 or rows.shape[1] != hidden_size or rows.shape[0] != span.num_rows:
                    raise InvalidSegments(
                        f"segment {position}: embedding rows must be [{span.num_rows}, {hidden_size}], got {list(rows.shape)}"
                    )
            if span.num_rows <= 0 or not span.content_id:
                raise InvalidSegments(f"segment {position}: an embedding span needs content_id and num_rows > 0")
            segments.append(EmbeddingSegment(content_id=span.content_id, rows=rows, num_rows=span.num_rows))
        else:
            raise InvalidSegments(f"segment {position} is empty")
    return segments


def timing(stage: str, queue_ns: int, compute_ns: int) -> common_pb2.StageTiming:
    return common_pb2.StageTiming(stage=stage, queue_ns=queue_ns, compute_ns=compute_ns)


class LLMServicer(llm_pb2_grpc.LLMServicer, LoadingGate):
    """Registered before the model loads (health says NOT_SERVING meanwhile); `attach` opens it."""

    def attach(self, engine: LLMEngine, tokenizer: QwenTokenizer, hidden_size: int, vocab_size: int,
               max_context_tokens: int, weights: common_pb2.WeightsInfo) -> None:
        self._engine = engine
        self._tokenizer = tokenizer
        self._hidden_size = hidden_size
        self._vocab_size = vocab_size
        self._max_context_tokens = max_context_tokens
        self._weights = weights
        self.open()

    async def Describe(self, request, context):
        await self.require_loaded(context)
        return llm_pb2.DescribeResponse(
            max_context_tokens=self._max_context_tokens,
            hidden_size=self._hidden_size,
            vocab_size=self._vocab_size,
            eos_token_id=self._tokenizer.special.im_end,
            weights=self._weights,
        )

    async def ReleaseSession(self, request, context):
        await self.require_loaded(context)
        if not request.ctx.session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ctx.session_id is required")
        self._engine.release_session(request.ctx.session_id)
        return llm_pb2.ReleaseSessionResponse(released=True)

    async def Generate(self, request, context):
        await self.require_loaded(context)
        ctx = request.ctx
        if not ctx.session_id or not ctx.turn_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ctx.session_id and ctx.turn_id are required")
        if request.max_new_tokens <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens must be > 0")
        try:
            segments = segments_from_proto(request.segments, self._hidden_size)
        except InvalidSegments as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not segments:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the prompt is empty")
        for segment in segments:
            if isinstance(segment, TokenSegment) and any(not 0 <= i < self._vocab_size for i in segment.ids):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"token ids must be in [0, {self._vocab_size})")

        stop_ids = tuple(request.stop_token_ids) or (self._tokenizer.special.im_end,)
        engine_request = GenerationRequest(
            request_id=uuid.uuid4().hex,
            session_id=ctx.session_id,
            segments=segments,
            max_new_tokens=request.max_new_tokens,
            temperature=max(0.0, request.temperature),
            top_p=request.top_p if 0.0 < request.top_p <= 1.0 else 1.0,
            seed=ctx.seed if ctx.HasField("seed") else None,
            stop_token_ids=stop_ids,
        )
        events: EngineEvents = EngineEvents()
        decoder = self._tokenizer.incremental_decoder()

        def decode_and_hand_over(event) -> None:
            # Detokenized here, on the engine thread, so the event loop only frames messages. A DecodeStream
            # step (~1 µs) costs less than the hand-off itself (~4 µs); an executor would add a second
            # thread hop per token for the same work.
            text = ""
            if isinstance(event, TokenEvent) and event.token_id not in stop_ids:  # the stop token is no text
                text = decoder.push(event.token_id)
            elif isinstance(event, FinishedEvent):
                text = decoder.flush()
            events.push((event, text))

        try:
            self._engine.submit(engine_request, decode_and_hand_over)
        except EngineBusy as busy:
            await abort_exhausted(context, str(busy), busy.retry_after_ms)
        except EngineStopped:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the LLM service is shutting down")
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        finished = False
        try:
            while True:
                burst = [await events.get(), *events.drain()]
                token_ids: list[int] = []
                text = []
                for event, piece in burst:
                    if isinstance(event, TokenEvent):
                        token_ids.append(event.token_id)
                        text.append(piece)
                    elif isinstance(event, FinishedEvent):
                        finished = True
                        text.append(piece)
                        if token_ids or any(text):
                            yield llm_pb2.GenerateResponse(delta=llm_pb2.TokenDelta(token_ids=token_ids, text="".join(text)))
                        self._observe(event)
                        yield llm_pb2.GenerateResponse(done=self._done(event))
                        return
                    elif isinstance(event, FailedEvent):
                        finished = True
                        metrics.REQUESTS.labels("failed").inc()
                        await self._abort_for(event.error, context)
                if token_ids:
                    yield llm_pb2.GenerateResponse(delta=llm_pb2.TokenDelta(token_ids=token_ids, text="".join(text)))
        finally:
            if not finished:
                # The caller cancelled or went away: stop decoding at the next step boundary.
                self._engine.cancel(engine_request.request_id)
                metrics.REQUESTS.labels("cancelled").inc()

    async def _abort_for(self, error: Exception, context) -> None:
        if isinstance(error, MissingMediaRows):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        if isinstance(error, EngineStopped):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the LLM service is shutting down")
        if isinstance(error, ValueError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        log.error("generation failed: %r", error)
        await context.abort(grpc.StatusCode.INTERNAL, "generation failed inside the LLM engine")

    def _observe(self, event: FinishedEvent) -> None:
        metrics.REQUESTS.labels(event.reason).inc()
        metrics.QUEUE_SECONDS.observe(event.queue_ns / 1e9)
        metrics.PREFILL_SECONDS.observe(event.prefill_ns / 1e9)
        metrics.DECODE_SECONDS.observe(event.decode_ns / 1e9)
        metrics.PROMPT_TOKENS.labels("cache").inc(event.cached_tokens)
        metrics.PROMPT_TOKENS.labels("prefill").inc(event.prefilled_tokens)
        metrics.GENERATED_TOKENS.inc(event.generated_tokens)
        metrics.BATCH_SIZE.observe(event.batch_size_max)
        if event.decode_ns > 0 and event.generated_tokens > 1:
            metrics.TOKENS_PER_SECOND.observe(event.generated_tokens / (event.decode_ns / 1e9))
        stats = self._engine.stats()
        metrics.CACHED_SESSIONS.set(stats.cached_sessions)
        metrics.CACHED_TOKENS.set(stats.cached_tokens)

    @staticmethod
    def _done(event: FinishedEvent) -> llm_pb2.GenerateDone:
        return llm_pb2.GenerateDone(
            finish_reason=llm_pb2.FinishReason.Value(f"FINISH_REASON_{event.reason.upper()}"),
            prompt_tokens=event.prompt_tokens,
            cached_tokens=event.cached_tokens,
            prefilled_tokens=event.prefilled_tokens,
            generated_tokens=event.generated_tokens,
            max_batch_size=event.batch_size_max,
            timings=[
                timing("llm.queue", event.queue_ns, 0),
                timing("llm.prefill", 0, event.prefill_ns),
                timing("llm.decode", 0, event.decode_ns),
            ],
        )


def build_engine(common: ServiceSettings, settings: LLMSettings) -> tuple[LLMEngine, QwenTokenizer, dict]:
    """Loads the model and tokenizer and builds the engine (also used by the in-process benchmark)."""
    preset = get_preset(common.preset)
    device = resolve_device(common.device)
    dtype = resolve_dtype(common.dtype, device)
    model = load_llm(preset.llm, seed=preset.init_seed, device=device, dtype=dtype, checkpoint_dir=common.checkpoint)
    dims = model.dims  # the checkpoint's own dims when one is served, else the preset's
    if common.checkpoint:
        tokenizer = checkpoint_tokenizer(common.checkpoint, embedding_rows=dims.vocab_size)
    else:
        tokenizer = QwenTokenizer.from_dir()
    max_context = min(settings.max_context_tokens or preset.max_context_tokens, dims.max_position_embeddings)
    engine = LLMEngine(
        model,
        device=device,
        max_batch_size=settings.max_batch_size,
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        max_context_tokens=max_context,
        kv_cache_max_sessions=settings.kv_cache_max_sessions,
        kv_cache_max_tokens=settings.kv_cache_max_tokens,
        max_waiting_requests=settings.max_waiting_requests,
        busy_retry_after_ms=settings.busy_retry_after_ms,
    )
    facts = dict(
        hidden_size=dims.hidden_size,
        vocab_size=dims.vocab_size,
        max_context_tokens=max_context,
        weights=weights_info(common.preset, common.checkpoint, dtype, device),
    )
    return engine, tokenizer, facts


class LLMApp(EngineApp):
    name = "llm"
    metrics = metrics.RPC
    service = llm_pb2.DESCRIPTOR.services_by_name["LLM"]
    add_servicer = staticmethod(llm_pb2_grpc.add_LLMServicer_to_server)

    def __init__(self, common: ServiceSettings, settings: LLMSettings):
        super().__init__(common, settings, LLMServicer())

    def start(self) -> None:
        engine, tokenizer, facts = build_engine(self.common, self.settings)
        engine.start()
        metrics.watch_engine(engine.stats)
        self.engine = engine
        self.servicer.attach(engine, tokenizer, **facts)

"""The same engines the services run, called directly: no gRPC, no Redis. This is the floor that the
distributed numbers are compared with (`vita bench --inprocess`) and the reference for the determinism
test (with a seed, the distributed stack must produce the same audio, byte for byte).

It implements the orchestrator's backend interfaces, so embedding rows cross this boundary as wire
tensors and are decoded here exactly as the LLM service decodes them off the wire."""

from __future__ import annotations

import uuid
from typing import AsyncIterator

from services.llm.config import LLMSettings
from services.llm.engine import (
    EmbeddingSegment,
    FailedEvent,
    FinishedEvent,
    GenerationRequest,
    LLMEngine,
    TokenEvent,
    TokenSegment,
)
from services.llm.server import build_engine as build_llm_engine
from services.orchestrator.backends import (
    BackendError,
    CallIds,
    LLMDelta,
    LLMDone,
    LLMFacts,
    MediaPiece,
    PromptPiece,
    SpeechAudio,
    SpeechDone,
    SpeechEvent,
    SpeechSegmentDone,
    StageTime,
    TokenPiece,
)
from services.speech.config import SpeechSettings
from services.speech.engine import AudioEvent, SegmentDoneEvent, SpeechEngine, StreamDoneEvent, StreamFailedEvent
from services.speech.server import build_engine as build_speech_engine
from shared.aio_bridge import EngineEvents
from shared.settings import ServiceSettings
from shared.tensors import from_wire
from shared.tokenizer import QwenTokenizer
from shared.weights_info import describe as describe_weights


class InProcessLLM:
    def __init__(self, engine: LLMEngine, tokenizer: QwenTokenizer, facts: dict):
        self._engine = engine
        self._tokenizer = tokenizer
        self._facts = facts

    async def describe(self) -> LLMFacts:
        return LLMFacts(
            max_context_tokens=self._facts["max_context_tokens"],
            hidden_size=self._facts["hidden_size"],
            eos_token_id=self._tokenizer.special.im_end,
            weights=describe_weights(self._facts["weights"]),
        )

    async def release_session(self, session_id: str) -> None:
        self._engine.release_session(session_id)

    async def generate(
        self, ids: CallIds, prompt: list[PromptPiece], *, max_new_tokens: int, temperature: float, top_p: float
    ) -> AsyncIterator[LLMDelta | LLMDone]:
        segments = [_segment(piece) for piece in prompt]
        stop_ids = (self._tokenizer.special.im_end,)
        request = GenerationRequest(
            request_id=uuid.uuid4().hex, session_id=ids.session_id, segments=segments, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, seed=ids.seed, stop_token_ids=stop_ids,
        )
        events: EngineEvents = EngineEvents()
        self._engine.submit(request, events.push)
        decoder = self._tokenizer.incremental_decoder()
        finished = False
        try:
            while True:
                event = await events.get()
                if isinstance(event, TokenEvent):
                    text = decoder.push(event.token_id) if event.token_id not in stop_ids else ""
                    yield LLMDelta((event.token_id,), text)
                elif isinstance(event, FinishedEvent):
                    finished = True
                    tail = decoder.flush()
                    if tail:
                        yield LLMDelta((), tail)
                    yield LLMDone(
                        finish_reason=event.reason, prompt_tokens=event.prompt_tokens,
                        cached_tokens=event.cached_tokens, prefilled_tokens=event.prefilled_tokens,
                        generated_tokens=event.generated_tokens,
                        timings=(StageTime("llm.queue", event.queue_ns, 0), StageTime("llm.prefill", 0, event.prefill_ns),
                                 StageTime("llm.decode", 0, event.decode_ns)),
                    )
                    return
                elif isinstance(event, FailedEvent):
                    finished = True
                    raise BackendError("INVALID_ARGUMENT" if isinstance(event.error, ValueError) else "INTERNAL",
                                       str(event.error))
        finally:
            if not finished:
                self._engine.cancel(request.request_id)


def _segment(piece: PromptPiece) -> TokenSegment | EmbeddingSegment:
    if isinstance(piece, TokenPiece):
        return TokenSegment(ids=piece.ids)
    assert isinstance(piece, MediaPiece)
    # Empty rows mean "in the session's cache", as an empty Tensor does on the wire.
    rows = from_wire(piece.rows) if piece.rows is not None and piece.rows.nbytes else None
    return EmbeddingSegment(piece.content_id, rows, piece.num_rows)


class InProcessSpeechStream:
    def __init__(self, engine: SpeechEngine, stream_id: str, events: EngineEvents, sample_rate_hz: int):
        self._engine = engine
        self._stream_id = stream_id
        self._events = events
        self._sample_rate_hz = sample_rate_hz

    async def push(self, index: int, text: str) -> None:
        self._engine.push_segment(self._stream_id, text, index)

    async def end(self) -> None:
        self._engine.end_stream(self._stream_id)

    def cancel(self) -> None:
        self._engine.cancel_stream(self._stream_id)

    async def events(self) -> AsyncIterator[SpeechEvent]:
        while True:
            event = await self._events.get()
            if isinstance(event, AudioEvent):
                yield SpeechAudio(event.pcm.astype("<i2", copy=False).tobytes(), self._sample_rate_hz, event.segment_index)
            elif isinstance(event, SegmentDoneEvent):
                yield SpeechSegmentDone(
                    event.segment_index, event.codec_tokens, event.finish_reason,
                    (StageTime("speech.queue", event.queue_ns, 0), StageTime("speech.nar_prefill", 0, event.nar_prefill_ns),
                     StageTime("speech.ar", 0, event.ar_ns), StageTime("speech.codec", 0, event.codec_ns)),
                )
            elif isinstance(event, StreamDoneEvent):
                yield SpeechDone(event.reason)
                return
            elif isinstance(event, StreamFailedEvent):
                raise BackendError("INTERNAL", "synthesis failed")


class InProcessSpeech:
    def __init__(self, engine: SpeechEngine, sample_rate_hz: int):
        self._engine = engine
        self._sample_rate_hz = sample_rate_hz

    async def open(self, ids: CallIds) -> InProcessSpeechStream:
        stream_id = f"{ids.session_id}/{ids.turn_id}/{uuid.uuid4().hex[:8]}"
        events: EngineEvents = EngineEvents()
        self._engine.open_stream(stream_id, ids.seed, events.push)
        return InProcessSpeechStream(self._engine, stream_id, events, self._sample_rate_hz)


class InProcessModels:
    """Builds and owns the engines; `llm` and `speech` are the backends for a ReplyPipeline."""

    def __init__(self, common: ServiceSettings):
        llm_engine, self.tokenizer, llm_facts = build_llm_engine(common, LLMSettings())
        speech_engine, speech_facts = build_speech_engine(common, SpeechSettings())
        self._engines = (llm_engine, speech_engine)
        for engine in self._engines:
            engine.start()
        self.llm = InProcessLLM(llm_engine, self.tokenizer, llm_facts)
        self.speech = InProcessSpeech(speech_engine, speech_facts["sample_rate_hz"])

    def close(self) -> None:
        for engine in self._engines:
            engine.stop()

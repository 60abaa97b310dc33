"""One reply: LLM tokens stream to the client and, cut into segments, to the speech service while the
LLM is still generating; PCM comes back chunk by chunk, so that first audio never waits for the whole
reply. No gRPC here: the backends are
injected, so the same pipeline runs distributed and in one process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Protocol

from services.orchestrator.backends import (
    CallIds,
    LLMBackend,
    LLMDelta,
    LLMDone,
    PromptPiece,
    SpeechAudio,
    SpeechBackend,
    SpeechSegmentDone,
    SpeechStream,
    StageTime,
)
from services.orchestrator.segmenter import Segmenter
from shared.tokenizer import SpecialIds


@dataclass(frozen=True)
class SegmenterLimits:
    first_max_chars: int = 40
    min_chars: int = 5
    max_chars: int = 160

    def new(self) -> Segmenter:
        return Segmenter(self.first_max_chars, self.min_chars, self.max_chars)


@dataclass(frozen=True)
class ReplyRequest:
    ids: CallIds
    prompt: list[PromptPiece]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    speech_output: bool = True


class ReplySink(Protocol):
    """Where the reply goes as it is produced (the client stream, or a benchmark's recorder)."""

    async def text(self, text: str, token_ids: tuple[int, ...]) -> None: ...

    async def audio(self, pcm: bytes, sample_rate_hz: int, segment_index: int) -> None: ...

    async def suppressed(self) -> None: ...


@dataclass
class SpokenSegment:
    """A segment of the reply sent to speech, and the audio it has produced so far."""

    text: str
    audio_ms: float = 0.0
    done: bool = False  # all its audio was produced


@dataclass
class ReplyResult:
    """Everything produced so far; on cancellation, `run` leaves a partial result behind."""

    token_ids: list[int] = field(default_factory=list)  # generated ids, state symbol included, stop id excluded
    text: str = ""  # reply text without the state symbol
    state_token: int | None = None
    suppressed: bool = False
    llm_done: LLMDone | None = None
    codec_tokens: int = 0
    audio_samples: int = 0
    segments: int = 0
    spoken: list[SpokenSegment] = field(default_factory=list)  # by segment index
    stages: list[StageTime] = field(default_factory=list)
    first_text_ns: int | None = None  # perf_counter_ns
    first_audio_ns: int | None = None
    llm_finished_ns: int | None = None


class ReplyPipeline:
    """Shared by all turns; each `run` keeps its own state in a `_ReplyRun`."""

    def __init__(self, llm: LLMBackend, speech: SpeechBackend, special: SpecialIds, limits: SegmenterLimits):
        self.llm = llm
        self.speech = speech
        self.special = special
        self.limits = limits

    async def run(self, request: ReplyRequest, sink: ReplySink, result: ReplyResult) -> ReplyResult:
        """Fills `result` as it goes. Cancelling the task stops the LLM and the speech stream (each
        cancels its downstream call) and leaves `result` holding what was produced."""
        await _ReplyRun(self, request, sink, result).execute()
        return result


class _ReplyRun:
    def __init__(self, pipeline: ReplyPipeline, request: ReplyRequest, sink: ReplySink, result: ReplyResult):
        self._pipeline = pipeline
        self._request = request
        self._sink = sink
        self._result = result
        self._segmenter = pipeline.limits.new()
        self._speech_open: asyncio.Task[SpeechStream] | None = None
        self._speech: SpeechStream | None = None
        self._audio_pump: asyncio.Task | None = None

    async def execute(self) -> None:
        request, result = self._request, self._result
        completed = False
        if request.speech_output:
            # Connect while the LLM prefills, so the first segment does not pay for it.
            self._speech_open = asyncio.create_task(self._pipeline.speech.open(request.ids))
        try:
            tokens = self._pipeline.llm.generate(
                request.ids,
                request.prompt,
                max_new_tokens=request.max_new_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
            )
            # aclosing: a cancel that lands while we await the sink or the speech stream must still
            # close the LLM call at once, not when the generator is garbage-collected.
            async with contextlib.aclosing(tokens):
                async for item in tokens:
                    if isinstance(item, LLMDone):
                        result.llm_done = item
                        result.stages.extend(item.timings)
                    else:
                        await self._on_delta(item)
            result.llm_finished_ns = time.perf_counter_ns()
            await self._speak(self._segmenter.flush())
            if self._speech is not None:
                await self._speech.end()
                await self._audio_pump
            completed = True
        finally:
            if not completed:
                if self._audio_pump is not None:
                    self._audio_pump.cancel()
                if self._speech is not None:
                    self._speech.cancel()
            if self._speech_open is not None and self._speech is None:
                await self._discard(self._speech_open)

    async def _on_delta(self, delta: LLMDelta) -> None:
        self._raise_if_speech_failed()
        result = self._result
        first_delta = not result.token_ids
        text = self._take_delta(delta)
        if first_delta and result.suppressed:
            await self._sink.suppressed()
        if text and result.first_text_ns is None:
            result.first_text_ns = time.perf_counter_ns()
        # Called even for an empty text (a lone state symbol) so that its id counts as delivered.
        await self._sink.text(text, delta.token_ids)
        await self._speak(self._segmenter.push(text))

    def _raise_if_speech_failed(self) -> None:
        """The audio pump ends before the reply only when the speech stream failed (its service died): end
        the turn with that error now, instead of generating the rest of the reply for nobody and reporting
        the failure only when the LLM is done."""
        pump = self._audio_pump
        if pump is not None and pump.done() and not pump.cancelled() and pump.exception() is not None:
            raise pump.exception()

    async def _speak(self, segments: list[str]) -> None:
        if self._speech_open is None or self._result.suppressed:
            return
        for segment in segments:
            if self._speech is None:
                self._speech = await self._speech_open
                self._audio_pump = asyncio.create_task(self._pump_audio())
            self._result.spoken.append(SpokenSegment(segment))
            await self._speech.push(self._result.segments, segment)
            self._result.segments += 1

    @staticmethod
    async def _discard(speech_open: "asyncio.Task[SpeechStream]") -> None:
        """A stream opened for a reply that never spoke (no text, ☟, or a failure): close it. Its own
        failure is irrelevant by now, so it is not raised."""
        speech_open.cancel()
        try:
            stream = await speech_open
        except (asyncio.CancelledError, Exception):
            return
        stream.cancel()

    def _take_delta(self, delta: LLMDelta) -> str:
        """Records the delta's ids and returns its visible text (state symbol and stop id removed)."""
        special, result = self._pipeline.special, self._result
        text = delta.text
        ids = [i for i in delta.token_ids if i != special.im_end]
        if not result.token_ids and ids and ids[0] in special.state_ids:
            result.state_token = ids[0]
            result.suppressed = ids[0] == special.state_not_addressed
            text = text[1:] if text else text
        result.token_ids.extend(ids)
        result.text += text
        return text

    async def _pump_audio(self) -> None:
        result = self._result
        async for event in self._speech.events():
            if isinstance(event, SpeechAudio):
                if result.first_audio_ns is None:
                    result.first_audio_ns = time.perf_counter_ns()
                result.audio_samples += len(event.pcm) // 2
                result.spoken[event.segment_index].audio_ms += len(event.pcm) // 2 * 1000 / event.sample_rate_hz
                await self._sink.audio(event.pcm, event.sample_rate_hz, event.segment_index)
            elif isinstance(event, SpeechSegmentDone):
                result.codec_tokens += event.codec_tokens
                result.spoken[event.segment_index].done = True
                result.stages.extend(event.timings)

"""The reply pipeline's own logic, with fake backends (allowed here: this tests the orchestrator alone)."""

from __future__ import annotations

import asyncio

import pytest

from services.orchestrator.backends import CallIds, LLMDelta, LLMDone, SpeechAudio, SpeechDone, SpeechSegmentDone
from services.orchestrator.pipeline import ReplyPipeline, ReplyRequest, ReplyResult, SegmenterLimits
from shared.tokenizer import QwenTokenizer

SPECIAL = QwenTokenizer.from_dir().special


class FakeLLM:
    def __init__(self, deltas: list[LLMDelta], delay_s: float = 0.0):
        self.deltas = deltas
        self.delay_s = delay_s
        self.closed = False

    async def generate(self, ids, prompt, *, max_new_tokens, temperature, top_p):
        try:
            for delta in self.deltas:
                await asyncio.sleep(self.delay_s)
                yield delta
            yield LLMDone("stop", 10, 0, 10, len(self.deltas))
        finally:
            self.closed = True


class FakeSpeechStream:
    def __init__(self):
        self.segments: list[str] = []
        self.ended = False
        self.cancelled = False
        self._queue: asyncio.Queue = asyncio.Queue()

    async def push(self, index, text):
        self.segments.append(text)
        await self._queue.put(SpeechAudio(b"\x01\x00" * 600, 24000, index))
        await self._queue.put(SpeechSegmentDone(index, 1, "eos"))

    async def end(self):
        self.ended = True
        await self._queue.put(SpeechDone("completed"))

    def cancel(self):
        self.cancelled = True

    async def events(self):
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, SpeechDone):
                return


class FakeSpeech:
    def __init__(self):
        self.streams: list[FakeSpeechStream] = []

    async def open(self, ids):
        stream = FakeSpeechStream()
        self.streams.append(stream)
        return stream


class Sink:
    def __init__(self):
        self.texts, self.chunks, self.suppressed_calls, self.ids = [], [], 0, []

    async def text(self, text, token_ids):
        self.texts.append(text)
        self.ids.extend(token_ids)

    async def audio(self, pcm, rate, index):
        self.chunks.append((index, len(pcm)))

    async def suppressed(self):
        self.suppressed_calls += 1


def request():
    return ReplyRequest(CallIds("s", "t", 1), [], max_new_tokens=32)


async def test_state_symbol_is_stripped_and_speech_follows_the_text():
    deltas = [LLMDelta((SPECIAL.state_text_reply,), "☜"), LLMDelta((9707,), "Hello,"), LLMDelta((1879,), " world"),
              LLMDelta((SPECIAL.im_end,), "")]
    speech, sink = FakeSpeech(), Sink()
    pipeline = ReplyPipeline(FakeLLM(deltas), speech, SPECIAL, SegmenterLimits())
    result = await pipeline.run(request(), sink, ReplyResult())
    assert result.text == "Hello, world" and result.state_token == SPECIAL.state_text_reply
    assert result.token_ids == [SPECIAL.state_text_reply, 9707, 1879]  # the stop id is not part of the reply
    assert speech.streams[0].segments == ["Hello,", "world"] and speech.streams[0].ended
    assert [index for index, _ in sink.chunks] == [0, 1] and result.codec_tokens == 2
    assert sink.ids[0] == SPECIAL.state_text_reply  # the lone symbol still counts as delivered


async def test_not_addressed_reply_is_suppressed_and_never_spoken():
    deltas = [LLMDelta((SPECIAL.state_not_addressed,), "☟"), LLMDelta((9707,), "Hello.")]
    speech, sink = FakeSpeech(), Sink()
    pipeline = ReplyPipeline(FakeLLM(deltas), speech, SPECIAL, SegmenterLimits())
    result = await pipeline.run(request(), sink, ReplyResult())
    assert result.suppressed and sink.suppressed_calls == 1
    assert sink.chunks == [] and all(not s.segments for s in speech.streams)
    assert all(s.cancelled for s in speech.streams)  # the stream opened early is closed unused
    assert result.text == "Hello."  # kept for history


async def test_cancel_closes_the_llm_call_and_the_speech_stream():
    deltas = [LLMDelta((i,), "word, ") for i in range(100, 400)]
    llm, speech, sink = FakeLLM(deltas, delay_s=0.005), FakeSpeech(), Sink()
    pipeline = ReplyPipeline(llm, speech, SPECIAL, SegmenterLimits())
    result = ReplyResult()
    task = asyncio.create_task(pipeline.run(request(), sink, result))
    while not sink.chunks:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert llm.closed and speech.streams[0].cancelled
    assert 0 < len(result.token_ids) < 300

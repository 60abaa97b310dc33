"""The fake speech service: vita.speech.v1.Speech with paced silent PCM.

Segments are spoken one after another, as the real service does per stream. A segment's length is its
characters × speech_s_per_char, in whole codec tokens (600 samples at 24 kHz); it comes out in chunks of
the real service's sizes (the first segment's first chunk is short, so first audio comes early).
"""

from __future__ import annotations

import asyncio
import time

import grpc

from apps.fakes.config import FakeSettings
from apps.fakes.pacing import Slots, sleep_until
from shared.grpc_server import LoadingGate
from vita.common.v1 import common_pb2
from vita.speech.v1 import speech_pb2, speech_pb2_grpc

SAMPLE_RATE_HZ = 24_000
SAMPLES_PER_TOKEN = 600
# Codec tokens per chunk: the speech service's first_chunk_tokens / chunk_tokens defaults.
FIRST_CHUNK_TOKENS = 20
CHUNK_TOKENS = 40
MAX_SEGMENT_CHARS = 2000


def chunk_tokens(segment_index: int, total_tokens: int) -> list[int]:
    """Codec tokens of each chunk of a segment."""
    sizes, left = [], total_tokens
    first = FIRST_CHUNK_TOKENS if segment_index == 0 else CHUNK_TOKENS
    while left > 0:
        size = min(left, first if not sizes else CHUNK_TOKENS)
        sizes.append(size)
        left -= size
    return sizes


class _Silence:
    """Silent PCM of each chunk size, built once: the fake spends no time making audio."""

    def __init__(self):
        self._by_tokens: dict[int, bytes] = {}

    def __call__(self, tokens: int) -> bytes:
        pcm = self._by_tokens.get(tokens)
        if pcm is None:
            pcm = self._by_tokens[tokens] = bytes(2 * SAMPLES_PER_TOKEN * tokens)
        return pcm


class FakeSpeech(speech_pb2_grpc.SpeechServicer, LoadingGate):
    def __init__(self, settings: FakeSettings, preset: str):
        self._settings = settings
        self._slots = Slots(settings.speech_max_streams)
        self._silence = _Silence()
        self._weights = common_pb2.WeightsInfo(source="fake", name=preset, dtype="none", device="none")

    async def Describe(self, request, context):
        await self.require_loaded(context)
        return speech_pb2.DescribeResponse(
            sample_rate_hz=SAMPLE_RATE_HZ, samples_per_token=SAMPLES_PER_TOKEN, weights=self._weights
        )

    def segment_tokens(self, text: str) -> int:
        return max(1, round(len(text.strip()) * self._settings.speech_s_per_char * SAMPLE_RATE_HZ / SAMPLES_PER_TOKEN))

    async def Synthesize(self, request_iterator, context):
        await self.require_loaded(context)
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before its start message")
        if first.WhichOneof("msg") != "start":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `start`")
        segments: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(self._read_segments(request_iterator, segments))
        try:
            async with self._slots.hold() as queue_ns:
                while True:
                    item = await segments.get()
                    if item is None:
                        yield speech_pb2.SynthesizeResponse(
                            done=speech_pb2.SynthesisDone(reason=speech_pb2.SYNTHESIS_END_REASON_COMPLETED))
                        return
                    if isinstance(item, str):
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, item)
                    async for response in self._speak(*item, queue_ns):
                        yield response
                    queue_ns = 0
        finally:
            reader.cancel()

    async def _read_segments(self, request_iterator, segments: asyncio.Queue) -> None:
        """Puts (index, text) for each segment, a message string for a bad one, None at the end."""
        expected = 0
        async for message in request_iterator:
            if message.WhichOneof("msg") != "segment":
                segments.put_nowait("only `segment` messages may follow `start`")
                return
            segment = message.segment
            if segment.index != expected:
                segments.put_nowait(f"segment index {segment.index} out of order; expected {expected}")
                return
            if len(segment.text) > MAX_SEGMENT_CHARS:
                segments.put_nowait(f"segment {segment.index} has {len(segment.text)} characters; "
                                    f"the limit is {MAX_SEGMENT_CHARS}")
                return
            segments.put_nowait((segment.index, segment.text))
            expected += 1
        segments.put_nowait(None)

    async def _speak(self, index: int, text: str, queue_ns: int):
        settings = self._settings
        started = time.perf_counter()
        tokens = self.segment_tokens(text)
        due = started + settings.speech_first_chunk_ms / 1000
        for size in chunk_tokens(index, tokens):
            await sleep_until(due)
            yield speech_pb2.SynthesizeResponse(audio=speech_pb2.AudioChunk(
                pcm=self._silence(size), sample_rate_hz=SAMPLE_RATE_HZ, segment_index=index))
            # The next chunk is ready once this one's audio was synthesised at the real-time factor.
            due += size * SAMPLES_PER_TOKEN / SAMPLE_RATE_HZ / settings.speech_realtime_factor
        elapsed_ns = int((time.perf_counter() - started) * 1e9)
        yield speech_pb2.SynthesizeResponse(segment_done=speech_pb2.SegmentDone(
            segment_index=index,
            codec_tokens=tokens,
            finish_reason=speech_pb2.SEGMENT_FINISH_REASON_EOS,
            text_tokens=len(text.split()),
            timings=[common_pb2.StageTiming(stage="speech.queue", queue_ns=queue_ns, compute_ns=0),
                     common_pb2.StageTiming(stage="speech.ar", queue_ns=0, compute_ns=elapsed_ns)],
        ))

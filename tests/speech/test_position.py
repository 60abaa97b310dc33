"""The listener's position: how it moves a stream's playback deadline, and the wire message that carries
it to the speech service."""

from __future__ import annotations

import grpc
import pytest

from services.speech.config import SpeechSettings
from services.speech.engine import SpeechEngine
from services.speech.playback import PlaybackClock
from services.speech.server import SpeechServicer
from vita.common.v1 import common_pb2
from vita.speech.v1 import speech_pb2, speech_pb2_grpc

MS = 1_000_000


def test_the_deadline_counts_from_the_first_chunk_or_from_the_listeners_report() -> None:
    clock = PlaybackClock(24_000)
    assert clock.deadline_ns() is None and clock.buffered_ns(5 * MS) == 0
    clock.note_audio(24_000, now_ns=1000 * MS)  # 1 s of audio at t = 1 s
    clock.note_audio(12_000, now_ns=1200 * MS)
    assert clock.deadline_ns() == 2500 * MS  # played in real time from the first chunk
    assert clock.buffered_ns(2000 * MS) == 500 * MS and clock.buffered_ns(3000 * MS) == 0
    # The listener started late: at t = 2 s it has played 200 ms, so it has 1.3 s left.
    clock.report(200, now_ns=2000 * MS)
    assert clock.deadline_ns() == 3300 * MS and clock.buffered_ns(2000 * MS) == 1300 * MS
    # A report past the audio delivered is taken as "played it all".
    clock.report(99_000, now_ns=2100 * MS)
    assert clock.deadline_ns() == 2100 * MS


@pytest.fixture
def engine(tiny_models, tokenizer):
    built = SpeechEngine(tiny_models, tokenizer, device="cpu", max_batch_size=2, codec_tokens_per_text_token=10,
                         length_cap_base_tokens=30, max_codec_tokens=60)
    built.start()
    yield built
    built.stop()


async def _synthesize(engine: SpeechEngine, *messages: speech_pb2.SynthesizeRequest) -> list:
    servicer = SpeechServicer()
    servicer.attach(engine, SpeechSettings(), sample_rate_hz=24000, samples_per_token=600,
                    weights=common_pb2.WeightsInfo())
    server = grpc.aio.server()
    speech_pb2_grpc.add_SpeechServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            start = speech_pb2.SynthesizeRequest(
                start=speech_pb2.SynthesisStart(ctx=common_pb2.CallContext(session_id="s", turn_id="t")))
            call = speech_pb2_grpc.SpeechStub(channel).Synthesize(iter([start, *messages]))
            return [response async for response in call]
    finally:
        await server.stop(0)


async def test_a_stream_takes_listener_positions_between_its_segments(engine) -> None:
    responses = await _synthesize(
        engine,
        speech_pb2.SynthesizeRequest(segment=speech_pb2.TextSegment(index=0, text="Hello there.")),
        speech_pb2.SynthesizeRequest(position=speech_pb2.ListenerPosition(played_ms=0)),
        speech_pb2.SynthesizeRequest(segment=speech_pb2.TextSegment(index=1, text="Fine.")),
        speech_pb2.SynthesizeRequest(position=speech_pb2.ListenerPosition(played_ms=400)),
    )
    assert responses[-1].done.reason == speech_pb2.SYNTHESIS_END_REASON_COMPLETED
    assert {r.segment_done.segment_index for r in responses if r.HasField("segment_done")} == {0, 1}


async def test_a_negative_position_is_invalid_argument(engine) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _synthesize(engine, speech_pb2.SynthesizeRequest(position=speech_pb2.ListenerPosition(played_ms=-5)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "played_ms must be ≥ 0" in refused.value.details()

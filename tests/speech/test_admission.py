"""Admission control of the speech service: streams open at once and unfinished segments per stream are
bounded; past a bound the engine raises SpeechBusyError and the servicer answers RESOURCE_EXHAUSTED with a
`retry-after-ms` hint, at once."""

from __future__ import annotations

import threading

import grpc
import pytest

from services.speech.config import SpeechSettings
from services.speech.engine import AudioEvent, SpeechBusyError, SpeechEngine
from services.speech.server import SpeechServicer
from shared.retry_hint import retry_after_ms
from vita.common.v1 import common_pb2
from vita.speech.v1 import speech_pb2, speech_pb2_grpc

SHORT_CAP = dict(codec_tokens_per_text_token=10, length_cap_base_tokens=30, max_codec_tokens=200)


@pytest.fixture
def engine(tiny_models, tokenizer):
    built = SpeechEngine(tiny_models, tokenizer, device="cpu", max_batch_size=2, max_open_streams=2,
                         max_queued_segments=2, busy_retry_after_ms=500, **SHORT_CAP)
    built.start()
    yield built
    built.stop()


def park(engine: SpeechEngine, stream_id: str) -> threading.Event:
    """A stream whose first audio holds the engine thread until the returned event is set."""
    parked, release = threading.Event(), threading.Event()

    def hold(event) -> None:
        if isinstance(event, AudioEvent) and not parked.is_set():
            parked.set()
            release.wait(30)

    engine.open_stream(stream_id, 0, hold)
    engine.push_segment(stream_id, "Hold the engine for a moment, please.", 0)
    assert parked.wait(30)
    return release


def test_streams_and_segments_past_their_bounds_are_refused(engine, event_log):
    release = park(engine, "held")
    try:
        engine.open_stream("second", 1, event_log.callback)
        with pytest.raises(SpeechBusyError, match=r"2 streams open.*retry in 500 ms"):
            engine.open_stream("third", 2, event_log.callback)
        engine.push_segment("second", "One.", 0)
        engine.push_segment("second", "Two.", 1)
        with pytest.raises(SpeechBusyError, match="2 unfinished segments") as busy:
            engine.push_segment("second", "Three.", 2)
        assert busy.value.retry_after_ms == 500
    finally:
        release.set()
    engine.end_stream("second")
    event_log.wait("second")
    engine.cancel_stream("held")
    # Drained: a new stream is taken again.
    engine.open_stream("later", 3, event_log.callback)
    engine.push_segment("later", "Hello.", 0)
    engine.end_stream("later")
    assert any(isinstance(e, AudioEvent) for e in event_log.wait("later"))


async def test_the_servicer_refuses_a_stream_with_resource_exhausted_and_a_hint(engine, tiny_models):
    servicer = SpeechServicer()
    servicer.attach(engine, SpeechSettings(), sample_rate_hz=24000, samples_per_token=600,
                    weights=common_pb2.WeightsInfo())
    server = grpc.aio.server()
    speech_pb2_grpc.add_SpeechServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    releases = [park(engine, "held-1")]
    engine.open_stream("held-2", 0, lambda event: None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = speech_pb2_grpc.SpeechStub(channel).Synthesize()
            await call.write(speech_pb2.SynthesizeRequest(
                start=speech_pb2.SynthesisStart(ctx=common_pb2.CallContext(session_id="s", turn_id="t"))
            ))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at capacity" in refused.value.details()
        assert retry_after_ms(refused.value.trailing_metadata()) == 500
    finally:
        for release in releases:
            release.set()
        engine.cancel_stream("held-1")
        engine.cancel_stream("held-2")
        await server.stop(0)

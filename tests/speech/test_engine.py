"""SpeechEngine: PCM format and length, end drains, cancel drops, batch-invariant determinism, errors."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from services.speech.engine import (
    AudioEvent,
    DuplicateStreamError,
    EngineStoppedError,
    SegmentDoneEvent,
    SegmentOrderError,
    SegmentTooLongError,
    SpeechEngine,
    StreamClosedError,
    StreamDoneEvent,
    StreamFailedEvent,
    UnknownStreamError,
)
from services.speech.tts import eos_id
from services.speech.weights import SpeechModels

HOP = 600
SHORT_CAP = dict(codec_tokens_per_text_token=10, length_cap_base_tokens=30, max_codec_tokens=200)


@pytest.fixture
def make_engine(tiny_models, tokenizer) -> Iterator:
    engines: list[SpeechEngine] = []

    def build(models: SpeechModels | None = None, **overrides) -> SpeechEngine:
        options = dict(device="cpu", max_batch_size=4) | SHORT_CAP | overrides
        engine = SpeechEngine(models or tiny_models, tokenizer, **options)
        engine.start()
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.stop()


def _with_eos_bias(models: SpeechModels, bias: float) -> SpeechModels:
    tts = copy.deepcopy(models.tts)
    with torch.no_grad():
        tts.out_fnn.bias[eos_id(tts.dims)] = bias
    return dataclasses.replace(models, tts=tts)


def _audio(events, segment_index: int | None = None) -> np.ndarray:
    chunks = [e.pcm for e in events if isinstance(e, AudioEvent) and segment_index in (None, e.segment_index)]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


def _done(events) -> list[SegmentDoneEvent]:
    return [e for e in events if isinstance(e, SegmentDoneEvent)]


def test_pcm_is_int16_at_600_samples_per_token_and_end_drains(make_engine, tiny_models, event_log) -> None:
    engine = make_engine()
    assert tiny_models.codec.sampling_rate == 24000
    engine.open_stream("s", 1, event_log.callback)
    engine.push_segment("s", "Hello there, how are you?", 0)
    engine.push_segment("s", "Fine.", 1)
    engine.end_stream("s")  # end drains: both queued segments are still spoken
    events = event_log.wait("s")

    assert isinstance(events[-1], StreamDoneEvent) and events[-1].reason == "completed"
    done = _done(events)
    assert [d.segment_index for d in done] == [0, 1]
    for segment in done:
        pcm = _audio(events, segment.segment_index)
        assert pcm.dtype == np.int16
        assert segment.codec_tokens > 30 and pcm.shape == (HOP * segment.codec_tokens,)
        assert segment.finish_reason in ("eos", "length_cap")
        assert segment.text_tokens > 0 and segment.nar_prefill_ns > 0 and segment.ar_ns > 0 and segment.codec_ns > 0
    # Segment 0's audio entirely precedes its SegmentDone, which precedes segment 1's audio.
    kinds = [(type(e).__name__, getattr(e, "segment_index", None)) for e in events]
    assert kinds.index(("SegmentDoneEvent", 0)) < kinds.index(("AudioEvent", 1))
    assert np.abs(_audio(events).astype(np.int32)).mean() > 100  # audible, not silence
    stats = engine.stats()
    assert stats.open_streams == 0 and stats.decoding_segments == 0 and stats.streams_completed == 1
    assert stats.audio_samples == HOP * sum(d.codec_tokens for d in done)
    # One loop step per AR step here (no step without a decoding segment), plus at most the final one
    # that only completes the stream.
    # The loop counts a step once it returns, and the stream's last event is delivered inside it.
    for _ in range(100):
        if stats.loop.steps >= stats.ar_steps:
            break
        time.sleep(0.05)
        stats = engine.stats()
    assert stats.ar_steps <= stats.loop.steps <= stats.ar_steps + 1 and stats.loop.step_errors == 0


def test_length_cap_and_eos_end_segments(make_engine, tiny_models, tokenizer, event_log) -> None:
    text = "One two three four."
    n_text = len(tokenizer.encode_text(text.lower()))
    never_eos = make_engine(_with_eos_bias(tiny_models, -1e4))
    never_eos.open_stream("cap", 3, event_log.callback)
    never_eos.push_segment("cap", text, 0)
    never_eos.end_stream("cap")
    (done,) = _done(event_log.wait("cap"))
    assert done.finish_reason == "length_cap"
    assert done.codec_tokens == 10 * n_text + 30 == done.text_tokens * 10 + 30

    always_eos = make_engine(_with_eos_bias(tiny_models, 1e4))
    always_eos.open_stream("eos", 3, event_log.callback)
    always_eos.push_segment("eos", text, 0)
    always_eos.end_stream("eos")
    events = event_log.wait("eos")
    (done,) = _done(events)
    assert (done.finish_reason, done.codec_tokens) == ("eos", 0)  # EOS is never emitted as a token
    assert _audio(events).size == 0


def test_empty_segment_makes_no_audio_and_the_next_gets_first_segment_chunking(make_engine, event_log) -> None:
    engine = make_engine()
    engine.open_stream("e", 5, event_log.callback)
    engine.push_segment("e", "☞ <|im_end|>", 0)
    engine.push_segment("e", "Hello there, friend.", 1)
    engine.end_stream("e")
    events = event_log.wait("e")
    empty, spoken = _done(events)
    assert (empty.segment_index, empty.finish_reason, empty.codec_tokens) == (0, "empty", 0)
    assert _audio(events, 0).size == 0
    chunks = [e.pcm for e in events if isinstance(e, AudioEvent)]
    # First-segment chunking (C = 20, threshold 0.1): the first chunk holds at most 20 tokens of audio.
    assert len(chunks) > 1 and chunks[0].size <= 20 * HOP
    assert sum(c.size for c in chunks) == HOP * spoken.codec_tokens


def test_stream_of_only_empty_segments_completes(make_engine, event_log) -> None:
    engine = make_engine()
    engine.open_stream("q", None, event_log.callback)
    engine.push_segment("q", "   ", 0)
    engine.end_stream("q")
    events = event_log.wait("q")
    assert [type(e) for e in events] == [SegmentDoneEvent, StreamDoneEvent]


def _synthesise(engine: SpeechEngine, event_log, streams: dict[str, tuple[int, list[str]]]) -> dict[str, list]:
    """Runs the streams so that they all start in the same engine iteration.

    A parked "blocker" stream holds the engine thread inside its callback while every command is queued;
    the next iteration then applies them together (and drops the cancelled blocker before any AR step).
    """
    parked, release = threading.Event(), threading.Event()

    def blocker(event) -> None:
        if isinstance(event, AudioEvent) and not parked.is_set():
            parked.set()
            release.wait(30)

    engine.open_stream("blocker", 0, blocker)
    engine.push_segment("blocker", "Hold the engine for a moment, please.", 0)
    assert parked.wait(30)
    for stream_id, (seed, _) in streams.items():
        engine.open_stream(stream_id, seed, event_log.callback)
    for stream_id, (_, texts) in streams.items():
        for index, text in enumerate(texts):
            engine.push_segment(stream_id, text, index)
        engine.end_stream(stream_id)
    engine.cancel_stream("blocker")
    release.set()
    return {stream_id: event_log.wait(stream_id) for stream_id in streams}


@pytest.mark.parametrize("codec_batch_size", [1, 3])
def test_same_seed_same_pcm_alone_or_batched(make_engine, event_log, codec_batch_size: int) -> None:
    target = (42, ["Good morning, my friend.", "It is sunny."])
    alone = _synthesise(make_engine(codec_batch_size=codec_batch_size), event_log, {"x-alone": target})
    crowded_engine = make_engine(codec_batch_size=codec_batch_size)
    steps_before = crowded_engine.stats()
    crowded = _synthesise(
        crowded_engine,
        event_log,
        {
            "a": (7, ["Another voice, talking.", "Still talking."]),
            "x-crowded": target,
            "b": (8, ["A third one, which is a little longer than the others."]),
        },
    )
    stats = crowded_engine.stats()
    assert stats.ar_rows - steps_before.ar_rows > stats.ar_steps - steps_before.ar_steps  # shared AR steps
    if codec_batch_size > 1:
        assert stats.codec_windows > stats.codec_calls  # some codec calls carried several streams' windows
    reference, candidate = alone["x-alone"], crowded["x-crowded"]
    for index in (0, 1):
        assert _audio(reference, index).size > 0
        assert _audio(reference, index).tobytes() == _audio(candidate, index).tobytes()
    assert _audio(crowded["a"])[:4800].tobytes() != _audio(reference)[:4800].tobytes()  # seeds matter


def test_cancel_stops_within_one_step_and_frees_state(make_engine, tiny_models, event_log) -> None:
    engine = make_engine(_with_eos_bias(tiny_models, -1e4), max_codec_tokens=1000, codec_tokens_per_text_token=25)
    first_audio = threading.Event()

    def callback(event) -> None:
        event_log.callback(event)
        if isinstance(event, AudioEvent):
            first_audio.set()

    engine.open_stream("c", 9, callback)
    engine.push_segment("c", "This sentence would take many seconds to say, if nobody stopped it.", 0)
    engine.push_segment("c", "Queued, never spoken.", 1)
    assert first_audio.wait(30)
    engine.cancel_stream("c")
    steps_at_cancel = engine.stats().ar_steps
    audio_at_cancel = sum(isinstance(e, AudioEvent) for e in event_log.events["c"])
    events = event_log.wait("c")
    assert events[-1] == StreamDoneEvent("c", "cancelled")
    stats = engine.stats()
    assert stats.ar_steps - steps_at_cancel <= 1  # the step in flight, no more
    assert sum(isinstance(e, AudioEvent) for e in events) <= audio_at_cancel + 1
    assert not _done(events)  # cancel drops: no SegmentDone for the interrupted or queued segments
    assert (stats.open_streams, stats.decoding_segments, stats.queued_segments, stats.cancelled_total) == (0, 0, 0, 1)
    with pytest.raises(UnknownStreamError):
        engine.push_segment("c", "late", 2)
    engine.cancel_stream("c")  # idempotent after the fact


def test_cancel_from_the_callback_runs_no_further_step(make_engine, tiny_models, event_log) -> None:
    engine = make_engine(_with_eos_bias(tiny_models, -1e4))
    steps: list[int] = []

    def callback(event) -> None:
        event_log.callback(event)
        if isinstance(event, AudioEvent) and not steps:
            steps.append(engine.stats().ar_steps)
            engine.cancel_stream("k")

    engine.open_stream("k", 2, callback)
    engine.push_segment("k", "Stop me as soon as you can, please.", 0)
    events = event_log.wait("k")
    assert events[-1] == StreamDoneEvent("k", "cancelled")
    assert engine.stats().ar_steps == steps[0]


def test_a_failing_consumer_fails_only_its_own_stream(make_engine, event_log) -> None:
    engine = make_engine()

    def broken(event) -> None:
        event_log.callback(event)
        if isinstance(event, AudioEvent):
            raise RuntimeError("consumer went away")

    engine.open_stream("bad", 1, broken)
    engine.open_stream("good", 1, event_log.callback)
    for stream_id in ("bad", "good"):
        engine.push_segment(stream_id, "Hello, world.", 0)
        engine.end_stream(stream_id)
    bad, good = event_log.wait("bad"), event_log.wait("good")
    assert isinstance(bad[-1], StreamFailedEvent) and "consumer went away" in str(bad[-1].error)
    assert good[-1] == StreamDoneEvent("good", "completed")
    assert engine.stats().failed_total == 1


def test_invalid_calls_raise_at_once(make_engine, tiny_models, tokenizer, event_log) -> None:
    engine = make_engine()
    with pytest.raises(UnknownStreamError):
        engine.push_segment("nope", "hi", 0)
    engine.open_stream("v", 1, event_log.callback)
    with pytest.raises(DuplicateStreamError):
        engine.open_stream("v", 1, event_log.callback)
    engine.push_segment("v", "hi.", 3)
    with pytest.raises(SegmentOrderError):
        engine.push_segment("v", "again", 3)
    with pytest.raises(SegmentTooLongError, match="split the text"):
        engine.push_segment("v", "word " * 600, 4)
    engine.end_stream("v")
    with pytest.raises(StreamClosedError):
        engine.push_segment("v", "after the end", 5)
    event_log.wait("v")

    stopped = SpeechEngine(tiny_models, tokenizer, device="cpu")
    with pytest.raises(EngineStoppedError):
        stopped.open_stream("w", 1, event_log.callback)


def test_stop_fails_open_streams(make_engine, event_log) -> None:
    engine = make_engine()
    engine.open_stream("open", 1, event_log.callback)
    engine.stop()
    (event,) = event_log.wait("open")
    assert isinstance(event, StreamFailedEvent) and isinstance(event.error, EngineStoppedError)

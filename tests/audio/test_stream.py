"""AudioStream end to end: chunks in, VAD events and embeddings out, equal to one-shot encoding."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
import torch

from services.audio.events import (
    DropReason,
    SpeechStarted,
    SpeechStopped,
    StopReason,
    UtteranceDropped,
    UtteranceReady,
    wait_for_utterances,
)
from services.audio.features import (
    NonFiniteAudioError,
    PcmFormatError,
    SampleRateError,
    clip_for_encoding,
    compute_fbank,
    resample_to_model_rate,
    to_pcm16,
)
from services.audio.stream import expected_llm_tokens
from services.audio.vad import VadConfig

from .conftest import noise, silence

# Streaming vs one-shot: fbank is bit-identical and only the per-chunk subsampling convolutions round
# differently (measured ~1e-7 on embeddings of std ~0.15).
STREAMING_TOLERANCE = 1e-5
BOUNDARY_TOLERANCE_MS = 100.0
CHUNK_MS = 40
WAIT_S = 30.0


def push_in_chunks(stream, samples: np.ndarray, rate: int, encoding: str = "pcm16") -> list:
    step = rate * CHUNK_MS // 1000
    events = []
    for begin in range(0, len(samples), step):
        piece = samples[begin : begin + step]
        data = to_pcm16(piece).astype("<i2").tobytes() if encoding == "pcm16" else piece.astype("<f4").tobytes()
        events += stream.push(data)
    return events


def one_shot_embeddings(engine, pcm16k: np.ndarray) -> torch.Tensor:
    samples = pcm16k.astype(np.float32) / 32768.0
    return engine.encode(torch.from_numpy(compute_fbank(samples))).result(WAIT_S)


def resample_input(samples16k: np.ndarray, rate: int) -> np.ndarray:
    """The audio as a client capturing at `rate` would send it."""
    return soxr.resample(samples16k, 16000, rate).astype(np.float32)


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


@pytest.fixture(scope="module")
def dialogue(speak):
    """1 s silence, phrase, 2 s silence, phrase, 1.5 s silence; with the true speech spans in ms."""
    first = speak("Hello there, what is the weather like in Paris today?")
    second = speak("Please tell me a short story about a brave little robot.")
    samples = np.concatenate([silence(1.0), first, silence(2.0), second, silence(1.5)])
    start0, start1 = 1000.0, 1000.0 + len(first) / 16 + 2000.0
    return samples, [(start0, start0 + len(first) / 16), (start1, start1 + len(second) / 16)]


@pytest.mark.parametrize(("rate", "encoding"), [(16000, "pcm16"), (48000, "f32")])
def test_vad_stream_yields_one_utterance_per_phrase_equal_to_one_shot(engine, dialogue, rate, encoding):
    samples16k, spans = dialogue
    samples = samples16k if rate == 16000 else resample_input(samples16k, rate)
    stream = engine.new_stream(VadConfig(), rate, encoding, vad_enabled=True)
    events = wait_for_utterances(push_in_chunks(stream, samples, rate, encoding), WAIT_S)
    assert kinds(events) == ["SpeechStarted", "SpeechStopped", "UtteranceReady"] * 2

    pre_roll_ms = VadConfig().pre_roll_ms
    for index, (start_ms, end_ms) in enumerate(spans):
        started, stopped, ready = events[3 * index : 3 * index + 3]
        assert started.utterance_index == stopped.utterance_index == ready.utterance_index == index
        assert abs(started.offset_ms + pre_roll_ms - start_ms) <= BOUNDARY_TOLERANCE_MS
        assert abs(stopped.offset_ms - end_ms) <= BOUNDARY_TOLERANCE_MS
        assert stopped.reason is StopReason.SILENCE

        assert ready.pcm16k.dtype == np.int16 and ready.duration_ms == len(ready.pcm16k) / 16
        assert ready.embeddings.shape == (expected_llm_tokens(len(ready.pcm16k)), 256)
        reference = one_shot_embeddings(engine, ready.pcm16k)
        assert (ready.embeddings - reference).abs().max() <= STREAMING_TOLERANCE
        assert ready.eos_to_ready_ns > 0
        assert [t.stage for t in ready.timings] == ["audio.subsample_while_speaking", "audio.encode"]


def test_utterance_audio_is_the_stream_audio(engine, dialogue):
    samples, _ = dialogue
    stream = engine.new_stream(VadConfig(), 16000, "pcm16")
    events = wait_for_utterances(push_in_chunks(stream, samples, 16000), WAIT_S)
    started, ready = events[0], events[2]
    begin = started.offset_samples
    np.testing.assert_array_equal(ready.pcm16k, to_pcm16(samples[begin : begin + len(ready.pcm16k)]))


def test_silence_and_noise_produce_no_events(engine):
    stream = engine.new_stream(VadConfig(), 16000, "pcm16")
    assert push_in_chunks(stream, silence(3.0), 16000) == []
    assert push_in_chunks(stream, noise(3.0, 0.03), 16000) == []
    assert stream.end_of_input() == []
    assert stream.push(b"") == []  # a keep-alive


def test_short_utterances_are_dropped(engine, speak):
    phrase = speak("Yes, please.")
    config = VadConfig(min_utterance_ms=len(phrase) // 16 + 2000)
    stream = engine.new_stream(config, 16000, "pcm16")
    events = push_in_chunks(stream, np.concatenate([silence(0.5), phrase, silence(1.0)]), 16000)
    assert kinds(events) == ["SpeechStarted", "SpeechStopped", "UtteranceDropped"]
    assert events[1].utterance is None
    assert events[2].reason is DropReason.TOO_SHORT and events[2].duration_ms < config.min_utterance_ms


def test_too_long_utterance_is_cut_with_a_clear_outcome_then_the_stream_goes_on(engine, speak):
    long_phrase = speak("This sentence keeps going for quite a while, longer than the limit allows.")
    question = speak("What time is it?")
    config = VadConfig(max_utterance_ms=2000)
    stream = engine.new_stream(config, 16000, "pcm16")
    samples = np.concatenate([silence(0.5), long_phrase, silence(1.5), question, silence(1.0)])
    events = wait_for_utterances(push_in_chunks(stream, samples, 16000), WAIT_S)
    assert kinds(events) == [
        "SpeechStarted", "SpeechStopped", "UtteranceDropped",  # the long one
        "SpeechStarted", "SpeechStopped", "UtteranceReady",  # the next question is served
    ]
    assert events[1].reason is StopReason.MAX_LENGTH
    assert events[1].offset_samples - events[0].offset_samples == config.max_utterance_samples
    assert events[2].reason is DropReason.TOO_LONG and events[2].duration_ms == 2000


def test_vad_commit_and_end_of_input_end_speech_in_progress(engine, speak):
    phrase = speak("Hello there, what is the weather like in Paris today?")
    for finish, reason in (("commit", StopReason.COMMIT), ("end_of_input", StopReason.END_OF_INPUT)):
        stream = engine.new_stream(VadConfig(), 16000, "pcm16")
        events = push_in_chunks(stream, np.concatenate([silence(0.5), phrase]), 16000)
        assert kinds(events) == ["SpeechStarted"]
        ended = wait_for_utterances(getattr(stream, finish)(), WAIT_S)
        assert kinds(ended) == ["SpeechStopped", "UtteranceReady"] and ended[0].reason is reason
        assert ended[0].offset_samples == stream.position_samples


def test_push_to_talk_commit_encodes_everything_since_the_last_commit(engine):
    clip = noise(1.5, 0.1, seed=4)
    rate = 24000
    samples = resample_input(clip, rate)
    stream = engine.new_stream(VadConfig(), rate, "f32", vad_enabled=False)
    events = push_in_chunks(stream, samples, rate, "f32")
    assert kinds(events) == ["SpeechStarted"] and events[0].offset_samples == 0
    committed = wait_for_utterances(stream.commit(), WAIT_S)
    assert kinds(committed) == ["SpeechStopped", "UtteranceReady"]
    stopped, ready = committed
    assert stopped.reason is StopReason.COMMIT
    expected_samples = len(resample_to_model_rate(samples, rate))
    assert len(ready.pcm16k) == expected_samples == stream.position_samples
    assert (ready.embeddings - one_shot_embeddings(engine, ready.pcm16k)).abs().max() <= STREAMING_TOLERANCE

    # The next utterance starts where the last commit ended; silence is encoded too (the client asked).
    events = push_in_chunks(stream, np.zeros(4800, np.float32), rate, "f32")
    assert kinds(events) == ["SpeechStarted"] and events[0].offset_samples == expected_samples
    assert kinds(wait_for_utterances(stream.commit(), WAIT_S)) == ["SpeechStopped", "UtteranceReady"]


def test_whole_clip_path_equals_the_stream_path(engine):
    clip = noise(1.2, 0.1, seed=9)
    pcm16k, feats = clip_for_encoding(clip)
    stream = engine.new_stream(VadConfig(), 16000, "f32", vad_enabled=False)
    push_in_chunks(stream, clip, 16000, "f32")
    ready = wait_for_utterances(stream.commit(), WAIT_S)[-1]
    np.testing.assert_array_equal(ready.pcm16k, pcm16k)
    assert (ready.embeddings - engine.encode(feats).result(WAIT_S)).abs().max() <= STREAMING_TOLERANCE


def test_push_to_talk_empty_short_cancelled_and_too_long(engine):
    config = VadConfig(min_utterance_ms=500, max_utterance_ms=1000)
    stream = engine.new_stream(config, 16000, "pcm16", vad_enabled=False)
    (empty,) = stream.commit()
    assert isinstance(empty, UtteranceDropped) and empty.reason is DropReason.EMPTY

    push_in_chunks(stream, noise(0.05, 0.1), 16000)  # 50 ms: under the encoder's 85 ms minimum
    short = stream.commit()
    assert kinds(short) == ["SpeechStopped", "UtteranceDropped"] and short[1].reason is DropReason.TOO_SHORT

    push_in_chunks(stream, noise(0.5, 0.1), 16000)
    (cancelled,) = stream.cancel()
    assert cancelled.reason is DropReason.CANCELLED and cancelled.duration_ms == 500
    assert kinds(stream.commit()) == ["UtteranceDropped"]  # nothing left: empty

    events = push_in_chunks(stream, noise(1.5, 0.1), 16000)
    assert kinds(events) == ["SpeechStarted", "SpeechStopped", "UtteranceDropped"]
    assert events[1].reason is StopReason.MAX_LENGTH and events[2].reason is DropReason.TOO_LONG
    assert push_in_chunks(stream, noise(0.3, 0.1), 16000) == []  # discarded until the commit
    (answer,) = stream.commit()  # the commit is still answered
    assert isinstance(answer, UtteranceDropped) and answer.reason is DropReason.EMPTY


def test_bad_chunks_raise_and_leave_the_stream_usable(engine):
    stream = engine.new_stream(VadConfig(), 16000, "f32", vad_enabled=False)
    with pytest.raises(PcmFormatError):
        stream.push(b"\x00" * 6)
    with pytest.raises(NonFiniteAudioError):
        stream.push(np.array([0.0, np.nan], dtype="<f4").tobytes())
    push_in_chunks(stream, noise(0.5, 0.1), 16000, "f32")
    assert kinds(wait_for_utterances(stream.commit(), WAIT_S)) == ["SpeechStopped", "UtteranceReady"]


def test_bad_stream_format_is_rejected(engine):
    with pytest.raises(SampleRateError):
        engine.new_stream(VadConfig(), 0, "pcm16")
    with pytest.raises(PcmFormatError):
        engine.new_stream(VadConfig(), 16000, "opus")


def test_clipped_square_wave_streams_without_error(engine):
    square = np.where(np.sin(2 * np.pi * 150 * np.arange(48000 * 2) / 48000) >= 0, 1.0, -1.0).astype(np.float32)
    stream = engine.new_stream(VadConfig(), 48000, "pcm16", vad_enabled=True)
    events = push_in_chunks(stream, square, 48000) + stream.end_of_input()
    for event in wait_for_utterances(events, WAIT_S):
        assert isinstance(event, (SpeechStarted, SpeechStopped, UtteranceReady, UtteranceDropped))
        if isinstance(event, UtteranceReady):
            assert torch.isfinite(event.embeddings).all()

"""Silero VAD segmentation on real (espeak-ng) speech, silence and noise (docs/MODEL.md#vad)."""

from __future__ import annotations

import numpy as np
import pytest

from services.audio.vad import (
    VAD_WINDOW_SAMPLES,
    VadConfig,
    VadConfigError,
    VadDecisionKind,
    VadSegmenter,
    silero_model_path,
)

from .conftest import noise, silence

BOUNDARY_TOLERANCE_SAMPLES = 1600  # ±100 ms
CHUNK_SAMPLES = 640  # 40 ms


def run_segmenter(silero, samples: np.ndarray, config: VadConfig | None = None):
    segmenter = VadSegmenter(silero, config or VadConfig())
    decisions = []
    for begin in range(0, len(samples), CHUNK_SAMPLES):
        decisions += segmenter.feed(samples[begin : begin + CHUNK_SAMPLES])
    return decisions


def test_model_comes_from_the_installed_wheel():
    path = silero_model_path()
    assert path.is_file() and "site-packages" in str(path)


def test_default_config_is_the_reference_one():
    config = VadConfig()
    assert (config.start_threshold, config.end_threshold) == (0.7, 0.55)
    assert (config.min_silence_ms, config.pre_roll_ms) == (500, 256)
    assert (config.min_utterance_ms, config.max_utterance_ms) == (1000, 30000)
    assert config.window_samples == VAD_WINDOW_SAMPLES == 512
    assert VadConfig(pre_roll_ms=0).pre_roll_ms == 0  # a value given is kept, zero included


@pytest.mark.parametrize(
    "fields",
    [
        {"start_threshold": 1.5},
        {"end_threshold": 0.8},  # above the start threshold
        {"min_silence_ms": -1},
        {"min_utterance_ms": 40000},  # above max
        {"window_samples": 4096},  # the v4 window of the reference; the v5+ model rejects it
    ],
)
def test_unusable_configs_are_rejected(fields):
    with pytest.raises(VadConfigError):
        VadConfig(**fields)


def test_silence_and_moderate_noise_never_start_speech(silero):
    assert run_segmenter(silero, silence(5.0)) == []
    for level in (0.01, 0.03, 0.1):  # -40, -30, -20 dBFS rms white noise
        assert run_segmenter(silero, noise(5.0, level, seed=int(level * 1000))) == []


@pytest.mark.parametrize("voice", ["en-us", "en+f3"])
def test_two_phrases_two_utterances_with_accurate_boundaries(silero, speak, voice):
    first = speak("Hello there, what is the weather like in Paris today?", voice)
    second = speak("Please tell me a short story about a brave little robot.", voice)
    samples = np.concatenate([silence(1.0), first, silence(2.0), second, silence(1.5)])
    starts = [16000, 16000 + len(first) + 32000]
    ends = [starts[0] + len(first), starts[1] + len(second)]

    decisions = run_segmenter(silero, samples)
    kinds = [d.kind for d in decisions]
    assert kinds == [VadDecisionKind.SPEECH_START, VadDecisionKind.SPEECH_END] * 2

    pre_roll = VadConfig().pre_roll_samples
    for index in range(2):
        start, end = decisions[2 * index], decisions[2 * index + 1]
        detected_start = start.utterance_start + pre_roll  # the event includes the pre-roll
        assert abs(detected_start - starts[index]) <= BOUNDARY_TOLERANCE_SAMPLES
        assert abs(end.speech_end - ends[index]) <= BOUNDARY_TOLERANCE_SAMPLES
        # The utterance audio is pre-roll + speech + the silence that ended it, as in the reference.
        assert end.cut - end.speech_end >= VadConfig().min_silence_samples


def test_pre_roll_never_reaches_before_the_stream(silero, speak):
    phrase = speak("Good morning.")
    decisions = run_segmenter(silero, np.concatenate([silence(0.1), phrase, silence(1.0)]))
    assert decisions[0].kind is VadDecisionKind.SPEECH_START and decisions[0].utterance_start == 0


def test_too_long_speech_is_cut_and_rearms_only_after_silence(silero, speak):
    phrase = speak("This sentence keeps going for quite a while, longer than the limit allows.")
    config = VadConfig(min_utterance_ms=500, max_utterance_ms=1500)
    samples = np.concatenate([silence(0.5), phrase, silence(1.0), phrase[:24000], silence(1.0)])
    decisions = run_segmenter(silero, samples, config)
    assert decisions[0].kind is VadDecisionKind.SPEECH_START
    assert decisions[1].kind is VadDecisionKind.TOO_LONG
    assert decisions[1].cut - decisions[0].utterance_start == config.max_utterance_samples
    # The rest of the long phrase does not open a new utterance; the next phrase after silence does.
    assert decisions[2].kind is VadDecisionKind.SPEECH_START
    assert decisions[2].utterance_start >= 8000 + len(phrase)

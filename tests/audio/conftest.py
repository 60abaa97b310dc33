"""Shared fixtures for the audio tests: the tiny encoder, a running engine, synthetic and spoken audio."""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from services.audio.encoder import WhaleAudioEncoder
from services.audio.engine import AudioEngine
from services.audio.features import decode_audio_file
from services.audio.vad import SileroVad
from services.audio.weights import load_audio_encoder
from shared.presets import TINY

SAMPLE_RATE = 16000
SEED = TINY.init_seed
# Below this |x| the espeak-ng output is digital silence; used to find where a phrase really starts/ends.
SPEECH_EDGE_LEVEL = 1e-3


@pytest.fixture(scope="session")
def tiny_encoder() -> WhaleAudioEncoder:
    return load_audio_encoder(TINY.audio, seed=SEED, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def silero() -> SileroVad:
    return SileroVad.load()


@pytest.fixture()
def engine(tiny_encoder: WhaleAudioEncoder, silero: SileroVad) -> Iterator[AudioEngine]:
    running = AudioEngine(tiny_encoder, device="cpu", max_batch_size=8, vad=silero)
    running.start()
    yield running
    running.stop()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)


def noise(seconds: float, level: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(round(seconds * SAMPLE_RATE))) * level).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _spoken(text: str, voice: str = "en-us") -> np.ndarray:
    command = ["espeak-ng", "--stdout", "-v", voice, "-s", "160", text]
    wav = subprocess.run(command, capture_output=True, check=True).stdout
    samples = decode_audio_file(wav)
    voiced = np.flatnonzero(np.abs(samples) > SPEECH_EDGE_LEVEL)
    # Trimmed to the voiced span, so the silence a test inserts is the true boundary.
    return samples[voiced[0] : voiced[-1] + 1].copy()


@pytest.fixture(scope="session")
def speak():
    """`speak(text, voice)` → 16 kHz float speech from espeak-ng, trimmed to its voiced span; skips without it."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return _spoken

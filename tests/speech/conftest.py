"""Shared fixtures of the speech tests: the tiny preset's seeded models and the bundled Qwen tokenizer."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest
import torch

from services.speech.events import SpeechEvent, StreamDoneEvent, StreamFailedEvent
from services.speech.weights import SpeechModels, load_speech_models
from shared.presets import TINY
from shared.tokenizer import QwenTokenizer


@pytest.fixture(scope="session")
def tiny_models() -> SpeechModels:
    return load_speech_models(
        TINY.tts, TINY.codec, TINY.llm, seed=TINY.init_seed, device="cpu", dtype=torch.float32
    )


@pytest.fixture(scope="session")
def tokenizer() -> QwenTokenizer:
    return QwenTokenizer.from_dir()


class EventLog:
    """Collects engine events per stream (the callback runs on the engine thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: dict[str, list[SpeechEvent]] = defaultdict(list)
        self._finished: dict[str, threading.Event] = defaultdict(threading.Event)

    def callback(self, event: SpeechEvent) -> None:
        with self._lock:
            self.events[event.stream_id].append(event)
            finished = self._finished[event.stream_id]
        if isinstance(event, (StreamDoneEvent, StreamFailedEvent)):
            finished.set()

    def wait(self, stream_id: str, timeout: float = 30.0) -> list[SpeechEvent]:
        with self._lock:
            finished = self._finished[stream_id]
        assert finished.wait(timeout), f"stream {stream_id} did not finish within {timeout} s"
        with self._lock:
            return list(self.events[stream_id])


@pytest.fixture
def event_log() -> EventLog:
    return EventLog()

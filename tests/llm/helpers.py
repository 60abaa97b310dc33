"""Helpers shared by the LLM tests."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from services.llm.engine import LLMEngine
from services.llm.requests import Event, FailedEvent, FinishedEvent, GenerationRequest, TokenEvent, TokenSegment
from shared.presets import TINY

# The tiny preset with a cut vocabulary: every code path is the same, loading takes 0.1 s instead of 3 s,
# and wider logit gaps keep greedy comparisons between batched and single runs robust.
SMALL_DIMS = dataclasses.replace(TINY.llm, vocab_size=4096)
SEED = 1234
EVENT_TIMEOUT_S = 30.0


class Collector:
    """on_event target that records events and signals the end of the request."""

    def __init__(self, on_token: Callable[[int], None] | None = None):
        self.events: list[Event] = []
        self.done = threading.Event()
        self._on_token = on_token

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, TokenEvent) and self._on_token is not None:
            self._on_token(len(self.tokens))
        if isinstance(event, (FinishedEvent, FailedEvent)):
            self.done.set()

    def wait(self) -> Collector:
        assert self.done.wait(EVENT_TIMEOUT_S), "request did not finish"
        return self

    @property
    def tokens(self) -> list[int]:
        return [event.token_id for event in self.events if isinstance(event, TokenEvent)]

    @property
    def finished(self) -> FinishedEvent:
        last = self.events[-1]
        assert isinstance(last, FinishedEvent), last
        return last

    @property
    def failed(self) -> FailedEvent:
        last = self.events[-1]
        assert isinstance(last, FailedEvent), last
        return last


def prompt_ids(length: int, offset: int = 0) -> tuple[int, ...]:
    return tuple((17 * index + 101 * offset + 3) % SMALL_DIMS.vocab_size for index in range(length))


def token_request(request_id: str, session_id: str, ids: tuple[int, ...], max_new_tokens: int = 8,
                  **options: object) -> GenerationRequest:
    return GenerationRequest(request_id=request_id, session_id=session_id, segments=[TokenSegment(ids)],
                             max_new_tokens=max_new_tokens, **options)  # type: ignore[arg-type]


def run_one(engine: LLMEngine, request: GenerationRequest) -> Collector:
    collector = Collector()
    engine.submit(request, collector)
    return collector.wait()

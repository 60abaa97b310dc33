"""Fixtures for the LLM tests: one small seeded model per test session, engines stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from services.llm.engine import LLMEngine
from services.llm.model import Qwen2ForCausalLM
from services.llm.weights import load_llm
from tests.llm.helpers import SEED, SMALL_DIMS


@pytest.fixture(scope="session")
def model() -> Qwen2ForCausalLM:
    return load_llm(SMALL_DIMS, seed=SEED, device="cpu", dtype=torch.float32)


@pytest.fixture
def make_engine(model: Qwen2ForCausalLM) -> Iterator[Callable[..., LLMEngine]]:
    engines: list[LLMEngine] = []

    def factory(**overrides: object) -> LLMEngine:
        options: dict[str, object] = {"device": "cpu", "max_context_tokens": 512}
        options.update(overrides)
        engine = LLMEngine(model, **options)  # type: ignore[arg-type]
        engine.start()
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        engine.stop()

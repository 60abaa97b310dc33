"""The batching engine: results equal unbatched ones, are routed per request, and failures stay local."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest
import torch
from torch import nn

from services.vision.engine import EngineStoppedError, VisionEngine
from services.vision.model import VisionEncoder
from services.vision.weights import load_vision
from shared.presets import TINY

DIMS = TINY.vision
WAIT_S = 30.0


@pytest.fixture(scope="module")
def model() -> VisionEncoder:
    return load_vision(DIMS, seed=TINY.init_seed, device="cpu", dtype=torch.float32)


class GatedModel(nn.Module):
    """Wraps the model; its first step blocks until released, so later requests queue up behind it."""

    def __init__(self, inner: VisionEncoder, fail_on_batch: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.dims = inner.dims
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.fail_on_batch = fail_on_batch

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(WAIT_S)
        if self.calls == self.fail_on_batch:
            raise RuntimeError("simulated device failure")
        return self.inner(tiles)


def _tiles(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 3, 448, 448, generator=torch.Generator().manual_seed(seed))


def test_concurrent_requests_are_batched_and_equal_unbatched(model: VisionEncoder) -> None:
    gated = GatedModel(model)
    engine = VisionEngine(gated, device="cpu", max_batch_size=4)
    engine.start()
    try:
        first = engine.encode_tiles(_tiles(1, 0))
        assert gated.entered.wait(WAIT_S)
        inputs = [_tiles(3, 1), _tiles(5, 2), _tiles(2, 3)]
        futures = [engine.encode_tiles(tiles) for tiles in inputs]
        assert engine.stats().queued_tiles == 10
        gated.release.set()
        results = [future.result(WAIT_S) for future in futures]
        first.result(WAIT_S)
    finally:
        engine.stop()
    with torch.inference_mode():
        for tiles, result in zip(inputs, results, strict=True):
            assert result.shape == (tiles.shape[0], 256, DIMS.llm_hidden)
            assert (result - model(tiles)).abs().max().item() < 1e-5
    stats = engine.stats()
    # FIFO fill up to 4: [1], [3 of B + 1 of C], [4 of C], [2 of D]; C is split across two steps.
    assert stats.batch_size_counts == {1: 1, 2: 1, 4: 2}
    assert (stats.batches, stats.tiles, stats.requests_completed) == (4, 11, 4)
    assert stats.queued_tiles == 0 and stats.busy_s > 0
    # Each request entered through the loop's inbox; the step after the blocked one saw all three at once.
    assert stats.loop.commands_applied == 4 and not stats.loop.running


def test_cancelled_request_is_skipped(model: VisionEncoder) -> None:
    gated = GatedModel(model)
    engine = VisionEngine(gated, device="cpu", max_batch_size=8)
    engine.start()
    try:
        engine.encode_tiles(_tiles(1, 0))
        assert gated.entered.wait(WAIT_S)
        doomed = engine.encode_tiles(_tiles(4, 1))
        kept = engine.encode_tiles(_tiles(1, 2))
        assert doomed.cancel()
        gated.release.set()
        assert kept.result(WAIT_S).shape[0] == 1
        with pytest.raises(CancelledError):
            doomed.result(0)
    finally:
        engine.stop()
    stats = engine.stats()
    assert stats.requests_cancelled == 1 and stats.tiles == 2


def test_model_failure_fails_only_that_step(model: VisionEncoder) -> None:
    gated = GatedModel(model, fail_on_batch=2)
    gated.release.set()
    engine = VisionEngine(gated, device="cpu", max_batch_size=2)
    engine.start()
    try:
        assert engine.encode_tiles(_tiles(1, 0)).result(WAIT_S).shape[0] == 1
        with pytest.raises(RuntimeError, match="simulated"):
            engine.encode_tiles(_tiles(1, 1)).result(WAIT_S)
        assert engine.encode_tiles(_tiles(1, 2)).result(WAIT_S).shape[0] == 1
    finally:
        engine.stop()
    assert engine.stats().requests_failed == 1


def test_stop_fails_queued_requests_and_refuses_new_ones(model: VisionEncoder) -> None:
    gated = GatedModel(model)
    engine = VisionEngine(gated, device="cpu", max_batch_size=1)
    engine.start()
    engine.encode_tiles(_tiles(1, 0))
    assert gated.entered.wait(WAIT_S)
    queued = engine.encode_tiles(_tiles(1, 1))
    stopper = threading.Thread(target=engine.stop)
    stopper.start()
    deadline = time.monotonic() + WAIT_S
    while engine.running and time.monotonic() < deadline:  # stop requested before the step ends
        time.sleep(0.001)
    gated.release.set()
    stopper.join(WAIT_S)
    with pytest.raises(EngineStoppedError):
        queued.result(WAIT_S)
    with pytest.raises(EngineStoppedError):
        engine.encode_tiles(_tiles(1, 2))


def test_input_validation_and_empty_requests(model: VisionEncoder) -> None:
    engine = VisionEngine(model, device="cpu")
    engine.start()
    try:
        with pytest.raises(ValueError):
            engine.encode_tiles(torch.zeros(1, 3, 224, 224))
        with pytest.raises(ValueError):
            engine.encode_tiles(torch.zeros(1, 3, 448, 448, dtype=torch.uint8))
        assert engine.encode_tiles(torch.zeros(0, 3, 448, 448)).result(WAIT_S).shape == (0, 256, DIMS.llm_hidden)
    finally:
        engine.stop()
    with pytest.raises(ValueError):
        VisionEngine(model, device="cpu", max_batch_size=0)

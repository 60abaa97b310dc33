"""AudioEngine: worker thread, batching, errors, lifecycle."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from services.audio.engine import AudioEngine, EngineStoppedError
from services.audio.features import AudioInputError, AudioTooShortError, compute_fbank
from services.audio.events import UtteranceReady, wait_for_utterances
from services.audio.vad import VadConfig

from .conftest import noise

BATCH_TOLERANCE = 1e-5
WAIT_S = 30.0


def clips(count: int) -> list[torch.Tensor]:
    seconds = [0.4, 2.3, 1.1, 0.9, 3.0, 1.7, 0.2][:count]
    return [torch.from_numpy(compute_fbank(noise(s, 0.1, seed=i))) for i, s in enumerate(seconds)]


def test_batched_encode_equals_unbatched(engine):
    features = clips(7)
    alone = [engine.encode(f).result(WAIT_S) for f in features]
    largest_before = engine.stats().largest_batch
    together = [future.result(WAIT_S) for future in engine.encode_many(features)]
    assert largest_before == 1 and engine.stats().largest_batch == len(features)
    for single, batched in zip(alone, together):
        assert single.shape == batched.shape and single.device.type == "cpu"
        assert (single - batched).abs().max() <= BATCH_TOLERANCE


def test_batches_respect_max_batch_size(tiny_encoder, silero):
    engine = AudioEngine(tiny_encoder, device="cpu", max_batch_size=2, vad=silero)
    engine.start()
    try:
        results = [f.result(WAIT_S) for f in engine.encode_many(clips(5))]
        stats = engine.stats()
        assert len(results) == 5 and stats.largest_batch == 2 and stats.batches_run == 3
    finally:
        engine.stop()


def test_invalid_requests_fail_fast_and_the_worker_survives_a_failing_one(engine):
    with pytest.raises(AudioTooShortError):
        engine.encode(torch.zeros(6, 80))
    with pytest.raises(ValueError, match=r"\[T, 80\]"):
        engine.encode(torch.zeros(100, 40))
    too_long = torch.zeros(4 * 5001 + 3, 80)  # 5001 encoder rows: past the 5000-row position table
    with pytest.raises(AudioInputError, match="too long"):
        engine.encode(too_long).result(WAIT_S)
    assert engine.encode(clips(1)[0]).result(WAIT_S).shape[0] > 0
    assert engine.stats().failures == 1


def test_lifecycle(tiny_encoder, silero):
    engine = AudioEngine(tiny_encoder, device="cpu", vad=silero)
    with pytest.raises(EngineStoppedError):
        engine.encode(clips(1)[0])
    engine.start()
    engine.start()  # idempotent
    assert engine.stats().running
    engine.stop()
    engine.stop()
    assert not engine.stats().running
    with pytest.raises(EngineStoppedError):
        engine.encode(clips(1)[0])


def test_stop_finishes_what_was_queued_before_it(tiny_encoder, silero):
    engine = AudioEngine(tiny_encoder, device="cpu", max_batch_size=8, vad=silero)
    engine.start()
    futures = engine.encode_many(clips(3))
    engine.stop()
    assert all(future.result(0).shape[0] > 0 for future in futures)
    assert engine.stats().utterances_encoded == 3 and engine.stats().queue_depth == 0


def test_a_failing_step_answers_its_callers_and_the_worker_goes_on(engine, monkeypatch):
    def broken(_items) -> None:
        raise RuntimeError("bug in the step")

    with monkeypatch.context() as patched:
        patched.setattr(engine, "_run_encodes", broken)
        with pytest.raises(RuntimeError, match="bug in the step"):
            engine.encode(clips(1)[0]).result(WAIT_S)
    assert engine.encode(clips(1)[0]).result(WAIT_S).shape[0] > 0
    assert engine.stats().loop.step_errors == 1


def test_the_stream_module_does_not_import_the_engine():
    # The engine makes streams; a stream only needs the types in services.audio.encoding.
    code = "import sys, services.audio.stream; assert 'services.audio.engine' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_concurrent_streams_are_isolated(engine):
    """Four push-to-talk streams fed from four threads at once; each gets its own audio back."""
    results: dict[int, UtteranceReady] = {}
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            stream = engine.new_stream(VadConfig(), 16000, "f32", vad_enabled=False)
            samples = noise(1.0 + 0.25 * index, 0.1, seed=100 + index)
            for begin in range(0, len(samples), 640):
                stream.push(samples[begin : begin + 640].astype("<f4").tobytes())
            events = wait_for_utterances(stream.commit(), WAIT_S)
            results[index] = next(e for e in events if isinstance(e, UtteranceReady))
        except BaseException as err:  # surfaced to the test thread below
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert not errors and sorted(results) == [0, 1, 2, 3]
    for index, ready in results.items():
        assert len(ready.pcm16k) == 16000 + 4000 * index
        feats = torch.from_numpy(compute_fbank(ready.pcm16k.astype(np.float32) / 32768))
        reference = engine.encode(feats).result(WAIT_S)
        assert (ready.embeddings - reference).abs().max() <= BATCH_TOLERANCE

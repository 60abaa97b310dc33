"""LLMEngine: continuous batching, session cache reuse, cancellation, errors, sampling."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

from services.llm.engine import LLMEngine
from services.llm.requests import (
    ContextTooLong,
    EmbeddingSegment,
    EngineStopped,
    FailedEvent,
    FinishedEvent,
    GenerationFailed,
    GenerationRequest,
    InvalidRequest,
    MissingMediaRows,
    TokenEvent,
    TokenSegment,
)
from services.llm.model import Qwen2ForCausalLM
from tests.llm.helpers import Collector, prompt_ids, run_one, token_request

MakeEngine = Callable[..., LLMEngine]


def _alone(make_engine: MakeEngine, request: GenerationRequest) -> list[int]:
    """Tokens of `request` run by itself on a fresh engine (cold cache)."""
    return run_one(make_engine(), request).tokens


def test_batch_of_three_equals_each_alone(make_engine: MakeEngine) -> None:
    requests = [token_request(f"r{i}", f"s{i}", prompt_ids(4 + 7 * i, i), max_new_tokens=10) for i in range(3)]
    expected = [_alone(make_engine, request) for request in requests]
    engine = make_engine()
    collectors = [Collector() for _ in requests]
    for request, collector in zip(requests, collectors):
        engine.submit(request, collector)
    for collector, tokens in zip(collectors, expected):
        collector.wait()
        assert collector.tokens == tokens
        assert collector.finished.reason == "length"
    assert max(c.finished.batch_size_max for c in collectors) == 3


def test_warm_second_turn_prefills_only_new_tokens(make_engine: MakeEngine) -> None:
    engine = make_engine()
    first_prompt = prompt_ids(20, 1)
    first = run_one(engine, token_request("t1", "chat", first_prompt, max_new_tokens=6))
    assert first.finished.cached_tokens == 0 and first.finished.prefilled_tokens == 20
    assert engine.stats().cached_sessions == 1
    # The last sampled token was never fed, so the cache holds prompt + 5 generated tokens.
    assert engine.stats().cached_tokens == 20 + 5

    second_prompt = first_prompt + tuple(first.tokens) + prompt_ids(7, 2)
    second_request = token_request("t2", "chat", second_prompt, max_new_tokens=8)
    second = run_one(engine, second_request)
    assert second.finished.prompt_tokens == len(second_prompt)
    assert second.finished.cached_tokens == 25
    assert second.finished.prefilled_tokens == len(second_prompt) - 25
    assert second.tokens == _alone(make_engine, second_request)


def test_identical_prompt_reuses_all_but_the_last_position(make_engine: MakeEngine) -> None:
    engine = make_engine()
    request = token_request("a", "s", prompt_ids(12), max_new_tokens=4)
    cold = run_one(engine, request)
    warm = run_one(engine, token_request("b", "s", prompt_ids(12), max_new_tokens=4))
    assert warm.finished.cached_tokens == 11 and warm.finished.prefilled_tokens == 1
    assert warm.tokens == cold.tokens


def test_lru_evicts_least_recent_session_over_session_limit(make_engine: MakeEngine) -> None:
    engine = make_engine(kv_cache_max_sessions=2)
    for session in ("s1", "s2", "s1", "s3"):  # s1 is touched again, so s2 is the least recent
        run_one(engine, token_request(f"{session}-{engine.stats().finished_total}", session,
                                      prompt_ids(8, 1), max_new_tokens=2))
    stats = engine.stats()
    assert stats.cached_sessions == 2 and stats.evicted_sessions_total == 1
    assert run_one(engine, token_request("x1", "s1", prompt_ids(8, 1), max_new_tokens=2)).finished.cached_tokens == 7
    assert run_one(engine, token_request("x2", "s2", prompt_ids(8, 1), max_new_tokens=2)).finished.cached_tokens == 0


def test_lru_evicts_over_token_limit(make_engine: MakeEngine) -> None:
    engine = make_engine(kv_cache_max_tokens=30)
    run_one(engine, token_request("a", "s1", prompt_ids(15, 1), max_new_tokens=3))  # holds 17
    assert engine.stats().cached_tokens == 17
    run_one(engine, token_request("b", "s2", prompt_ids(15, 2), max_new_tokens=3))  # 34 > 30: s1 goes
    stats = engine.stats()
    assert (stats.cached_sessions, stats.cached_tokens, stats.evicted_sessions_total) == (1, 17, 1)
    assert run_one(engine, token_request("c", "s1", prompt_ids(15, 1), max_new_tokens=1)).finished.cached_tokens == 0
    # An entry larger than the whole budget is not kept at all.
    run_one(engine, token_request("d", "s3", prompt_ids(40, 3), max_new_tokens=1))
    assert engine.stats().cached_tokens <= 30


def test_cancel_stops_within_one_step_and_leaves_a_valid_cache(make_engine: MakeEngine) -> None:
    engine = make_engine()
    prompt = prompt_ids(10, 4)

    def cancel_at_third(count: int) -> None:
        if count == 3:
            engine.cancel("long")

    collector = Collector(on_token=cancel_at_third)
    engine.submit(token_request("long", "s", prompt, max_new_tokens=200), collector)
    collector.wait()
    assert len(collector.tokens) == 3
    finished = collector.finished
    assert finished.reason == "cancelled" and finished.generated_tokens == 3
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.cancelled_total) == (0, 0, 1)
    # The cache kept after the cancel is exactly prompt + the fed tokens, and it is correct.
    assert stats.cached_tokens == 10 + 2
    follow_up = token_request("next", "s", prompt + tuple(collector.tokens) + (5, 6), max_new_tokens=5)
    warm = run_one(engine, follow_up)
    assert warm.finished.cached_tokens == 12
    assert warm.tokens == _alone(make_engine, follow_up)


def test_cancel_of_a_waiting_request(make_engine: MakeEngine) -> None:
    engine = make_engine(max_batch_size=1)
    queued = Collector()

    def on_blocker_token(count: int) -> None:
        # Both calls come from the engine thread, so the submit is queued before the cancel.
        if count == 1:
            engine.submit(token_request("queued", "b", prompt_ids(5), max_new_tokens=6), queued)
        elif count == 2:
            engine.cancel("queued")

    blocker = Collector(on_token=on_blocker_token)
    engine.submit(token_request("blocker", "a", prompt_ids(5), max_new_tokens=6), blocker)
    queued.wait()
    assert queued.tokens == [] and queued.finished.reason == "cancelled"
    assert queued.finished.prefilled_tokens == 0
    blocker.wait()
    assert blocker.finished.reason == "length" and len(blocker.tokens) == 6
    engine.cancel("blocker")  # finished already: ignored
    assert engine.stats().cancelled_total == 1


def test_cancel_during_chunked_prefill_keeps_the_computed_part(make_engine: MakeEngine) -> None:
    engine = make_engine(prefill_chunk_tokens=8)
    long_prompt = prompt_ids(50, 3)
    long_collector = Collector()

    def on_running_token(count: int) -> None:
        if count == 1:
            engine.submit(token_request("long", "s2", long_prompt, max_new_tokens=3), long_collector)
        elif count == 3:  # two chunks of the long prompt are in by now
            engine.cancel("long")

    running = Collector(on_token=on_running_token)
    engine.submit(token_request("running", "s1", prompt_ids(5, 1), max_new_tokens=6), running)
    long_collector.wait()
    cancelled = long_collector.finished
    assert cancelled.reason == "cancelled" and cancelled.generated_tokens == 0
    assert 0 < cancelled.prefilled_tokens < 50
    running.wait()
    again = token_request("again", "s2", long_prompt, max_new_tokens=3)
    resumed = run_one(engine, again)
    assert resumed.finished.cached_tokens == cancelled.prefilled_tokens
    assert resumed.tokens == _alone(make_engine, again)


def test_request_joining_midway_does_not_change_others(make_engine: MakeEngine) -> None:
    first = token_request("a", "sa", prompt_ids(9, 1), max_new_tokens=14)
    joiner = token_request("b", "sb", prompt_ids(13, 2), max_new_tokens=6)
    expected_first, expected_joiner = _alone(make_engine, first), _alone(make_engine, joiner)

    engine = make_engine()
    joined = Collector()
    leader = Collector(on_token=lambda count: engine.submit(joiner, joined) if count == 4 else None)
    engine.submit(first, leader)
    leader.wait()
    joined.wait()
    assert leader.tokens == expected_first
    assert joined.tokens == expected_joiner
    assert leader.finished.batch_size_max == 2


def test_long_prompt_is_prefilled_in_chunks_between_decode_steps(make_engine: MakeEngine) -> None:
    chunk = 8
    long_request = token_request("long", "s2", prompt_ids(50, 3), max_new_tokens=3)
    expected_long = _alone(make_engine, long_request)

    engine = make_engine(prefill_chunk_tokens=chunk)
    order: list[str] = []
    long_collector = Collector(on_token=lambda count: order.append("long"))

    def on_running_token(count: int) -> None:
        order.append("running")
        if count == 2:
            order.append("submit")
            engine.submit(long_request, long_collector)

    running = Collector(on_token=on_running_token)
    engine.submit(token_request("running", "s1", prompt_ids(5, 1), max_new_tokens=30), running)
    long_collector.wait()
    running.wait()
    # 50 rows in chunks of 8 = 7 iterations; the running decode advanced once per iteration meanwhile.
    between = order[order.index("submit") : order.index("long")]
    assert between.count("running") >= 6
    assert long_collector.finished.prefilled_tokens == 50
    assert long_collector.tokens == expected_long
    assert engine.stats().prefill_chunks >= 7


def test_invalid_requests_raise_synchronously(make_engine: MakeEngine, model: Qwen2ForCausalLM) -> None:
    engine = make_engine(max_context_tokens=32)
    hidden = model.dims.hidden_size
    with pytest.raises(ContextTooLong):
        engine.submit(token_request("r", "s", prompt_ids(40)), Collector())
    with pytest.raises(ContextTooLong):
        engine.submit(token_request("r", "s", prompt_ids(32)), Collector())  # no room for a reply
    with pytest.raises(InvalidRequest, match="max_new_tokens"):
        engine.submit(token_request("r", "s", prompt_ids(4), max_new_tokens=0), Collector())
    with pytest.raises(InvalidRequest, match="vocabulary"):
        engine.submit(token_request("r", "s", (1, model.dims.vocab_size)), Collector())
    with pytest.raises(InvalidRequest, match="img"):
        bad_rows = EmbeddingSegment("img", torch.zeros(3, hidden + 1), 3)
        engine.submit(GenerationRequest("r", "s", [bad_rows], max_new_tokens=2), Collector())
    with pytest.raises(InvalidRequest, match="empty"):
        engine.submit(GenerationRequest("r", "s", [], max_new_tokens=2), Collector())
    assert engine.stats().waiting == 0


def test_context_limit_ends_with_length(make_engine: MakeEngine) -> None:
    engine = make_engine(max_context_tokens=32)
    result = run_one(engine, token_request("r", "s", prompt_ids(28), max_new_tokens=100))
    assert result.finished.reason == "length" and len(result.tokens) == 4


def test_stop_token_is_emitted_then_finishes(make_engine: MakeEngine) -> None:
    request = token_request("r", "s", prompt_ids(6), max_new_tokens=12)
    free_run = _alone(make_engine, request)
    stop_id = free_run[2]
    request.stop_token_ids = (stop_id,)
    stopped = run_one(make_engine(), request)
    assert stopped.tokens == free_run[: free_run.index(stop_id) + 1]
    assert stopped.finished.reason == "stop"


def test_spliced_embedding_rows_equal_the_token_path(make_engine: MakeEngine, model: Qwen2ForCausalLM) -> None:
    head, media, tail = prompt_ids(5, 1), prompt_ids(6, 2), prompt_ids(4, 3)
    rows = model.embed(torch.tensor(media))
    by_tokens = token_request("t", "s1", head + media + tail, max_new_tokens=8)
    by_rows = GenerationRequest("e", "s2", [TokenSegment(head), EmbeddingSegment("clip-1", rows, len(media)),
                                            TokenSegment(tail)], max_new_tokens=8)
    engine = make_engine()
    assert run_one(engine, by_rows).tokens == run_one(engine, by_tokens).tokens


def test_missing_media_rows(make_engine: MakeEngine, model: Qwen2ForCausalLM) -> None:
    engine = make_engine()
    head, media = prompt_ids(5, 1), prompt_ids(6, 2)
    rows = model.embed(torch.tensor(media))

    def request(request_id: str, with_rows: bool, tail: tuple[int, ...]) -> GenerationRequest:
        segment = EmbeddingSegment("img-7", rows if with_rows else None, len(media))
        return GenerationRequest(request_id, "s", [TokenSegment(head), segment, TokenSegment(tail)], max_new_tokens=4)

    failed = run_one(engine, request("cold", False, (1, 2)))
    assert isinstance(failed.failed.error, MissingMediaRows)
    assert "img-7" in str(failed.failed.error)
    assert engine.stats().failed_total == 1

    run_one(engine, request("with-rows", True, (1, 2)))
    # The rows are cached now: a later turn may omit them and gets the same answer as sending them.
    warm = run_one(engine, request("no-rows", False, (1, 2, 3)))
    assert warm.finished.cached_tokens == len(head) + len(media) + 2
    assert warm.tokens == _alone(make_engine, request("cold-rows", True, (1, 2, 3)))


def test_seeded_sampling_is_deterministic(make_engine: MakeEngine) -> None:
    def sample(request_id: str, seed: int) -> list[int]:
        request = token_request(request_id, request_id, prompt_ids(8), max_new_tokens=12,
                                temperature=0.9, top_p=0.95, seed=seed)
        return run_one(engine, request).tokens

    engine = make_engine()
    first, again, other = sample("a", 7), sample("b", 7), sample("c", 8)
    assert first == again
    assert first != other


def test_concurrent_requests_on_one_session_do_not_share_a_cache(make_engine: MakeEngine) -> None:
    prompt = prompt_ids(16, 5)
    expected = _alone(make_engine, token_request("x", "x", prompt, max_new_tokens=8))
    engine = make_engine()
    collectors = [Collector(), Collector()]
    for index, collector in enumerate(collectors):
        engine.submit(token_request(f"r{index}", "same", prompt, max_new_tokens=8), collector)
    for collector in collectors:
        assert collector.wait().tokens == expected
    # The second copied the first's prompt positions instead of prefilling them.
    assert collectors[1].finished.cached_tokens == len(prompt) - 1
    assert engine.stats().cached_sessions == 1


def test_release_session_drops_its_cache(make_engine: MakeEngine) -> None:
    engine = make_engine()
    run_one(engine, token_request("a", "s", prompt_ids(8), max_new_tokens=2))
    assert engine.stats().cached_sessions == 1
    engine.release_session("s")
    assert run_one(engine, token_request("b", "t", prompt_ids(8), max_new_tokens=2)).finished.cached_tokens == 0
    assert engine.stats().cached_sessions == 1  # only "t"
    assert run_one(engine, token_request("c", "s", prompt_ids(8), max_new_tokens=2)).finished.cached_tokens == 0


def test_model_failure_fails_the_batch_and_the_engine_goes_on(
    make_engine: MakeEngine, model: Qwen2ForCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine()
    real_decode = model.decode
    calls = {"n": 0}

    def flaky_decode(*args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device fell over")
        return real_decode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model, "decode", flaky_decode)
    broken = run_one(engine, token_request("a", "s", prompt_ids(8), max_new_tokens=6))
    error = broken.failed.error
    assert isinstance(error, GenerationFailed) and "device fell over" not in str(error)
    assert isinstance(error.__cause__, RuntimeError)
    assert engine.stats().cached_sessions == 0  # a half-written cache is never stored
    healthy = run_one(engine, token_request("b", "s", prompt_ids(8), max_new_tokens=6))
    assert healthy.finished.reason == "length" and len(healthy.tokens) == 6


def test_callback_failure_cancels_only_that_request(make_engine: MakeEngine) -> None:
    engine = make_engine()
    finished = threading.Event()

    def broken(event: object) -> None:
        if isinstance(event, (FinishedEvent, FailedEvent)):
            finished.set()
        if isinstance(event, TokenEvent):
            raise RuntimeError("consumer gone")

    engine.submit(token_request("a", "s1", prompt_ids(8), max_new_tokens=20), broken)
    assert finished.wait(30)
    result = run_one(engine, token_request("b", "s2", prompt_ids(8), max_new_tokens=3))
    assert len(result.tokens) == 3
    assert engine.stats().cancelled_total == 1


def test_stop_fails_in_flight_requests_and_refuses_new_ones(make_engine: MakeEngine) -> None:
    engine = make_engine()
    started = threading.Event()
    collector = Collector(on_token=lambda count: started.set())
    engine.submit(token_request("a", "s", prompt_ids(8), max_new_tokens=10_000 // 30), collector)
    assert started.wait(30)
    engine.stop()
    assert collector.done.is_set()
    assert isinstance(collector.failed.error, EngineStopped)
    with pytest.raises(EngineStopped):
        engine.submit(token_request("b", "s", prompt_ids(8)), Collector())


def test_stats_carry_the_loop_counters_and_cancel_after_stop_is_harmless(make_engine: MakeEngine) -> None:
    engine = make_engine()
    run_one(engine, token_request("a", "s", prompt_ids(8), max_new_tokens=3))
    loop = engine.stats().loop
    assert loop.running and loop.commands_applied == 1 and loop.steps >= 2 and loop.busy_s > 0
    engine.stop()
    engine.cancel("a")  # a servicer cancels in its cleanup, possibly after shutdown
    engine.release_session("s")
    assert not engine.stats().loop.running


def test_a_bug_in_a_step_fails_the_requests_in_flight_and_the_engine_goes_on(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine()
    scheduler = engine._scheduler  # noqa: SLF001 - the fault is injected outside the model calls on purpose
    real_schedule = scheduler.schedule
    calls = {"n": 0}

    def faulty_schedule() -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyError("scheduler bug")
        return real_schedule()

    monkeypatch.setattr(scheduler, "schedule", faulty_schedule)
    broken = run_one(engine, token_request("a", "s", prompt_ids(8), max_new_tokens=6))
    assert isinstance(broken.failed.error, GenerationFailed)
    assert isinstance(broken.failed.error.__cause__, KeyError)
    assert engine.stats().loop.step_errors == 1 and engine.stats().running == 0
    healthy = run_one(engine, token_request("b", "s", prompt_ids(8), max_new_tokens=3))
    assert healthy.finished.reason == "length" and len(healthy.tokens) == 3

"""The LLM scheduler, on its own: no model, no torch (the last test proves it in a subprocess).

A stand-in cache object only counts positions; `FakeRunner` plays the part of the model runner and
reports back to the scheduler the way the engine does.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from services.llm.kv_cache import CacheEntry, SessionCacheStore
from services.llm.requests import EmbeddingSegment, GenerationRequest, MissingMediaRows, TokenSegment
from services.llm.scheduler import RequestState, Scheduler, StepPlan, Status

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FakeCache:
    length: int
    nbytes: int = 0

    def shrink_to_fit(self) -> None:
        pass


class FakeRows:
    """Embedding rows as the scheduler sees them: present or not."""

    shape = (3, 8)

    def is_floating_point(self) -> bool:
        return True


def make_scheduler(**overrides: int) -> Scheduler:
    options = {"max_batch_size": 4, "prefill_chunk_tokens": 8, "max_context_tokens": 100}
    options.update(overrides)
    store = SessionCacheStore(max_sessions=8, max_tokens=1000)
    return Scheduler(store=store, **options)


def submit(scheduler: Scheduler, request_id: str, prompt: int | list, *, session: str = "s",
           max_new_tokens: int = 5, stop: tuple[int, ...] = ()) -> RequestState:
    segments = [TokenSegment(tuple(range(prompt)))] if isinstance(prompt, int) else prompt
    request = GenerationRequest(request_id, session, segments, max_new_tokens=max_new_tokens, stop_token_ids=stop)
    state = RequestState.create(request, on_event=lambda event: None)
    scheduler.add(state)
    return state


class FakeRunner:
    """Executes plans the way the engine does, with every sampled token equal to `token`."""

    def __init__(self, scheduler: Scheduler, token: int = 7):
        self.scheduler = scheduler
        self.token = token

    def run(self, plan: StepPlan) -> None:
        for state, _ in plan.rejected:
            self.scheduler.detach(state)
        chunk = plan.prefill
        if chunk is not None:
            state = chunk.request
            if chunk.admission is not None:
                state.cache = FakeCache(chunk.admission.reuse_tokens)
            self.scheduler.prefilled(chunk)
            state.cache.length = chunk.end
            if chunk.completes_prompt:
                self.scheduler.start_decoding(state)
                self._accept(state)
        batch = self.scheduler.still_running(plan.decode)
        self.scheduler.decoded(batch)
        for state in batch:
            state.cache.length += 1
            self._accept(state)

    def _accept(self, state: RequestState) -> None:
        state.generated.append(self.token)
        if self.scheduler.finish_reason(state) is not None:
            self.scheduler.finish(state)

    def step(self) -> StepPlan:
        plan = self.scheduler.schedule()
        self.run(plan)
        return plan


def test_a_long_prompt_is_prefilled_one_chunk_per_step_and_then_joins_the_decode():
    scheduler = make_scheduler(prefill_chunk_tokens=8)
    state = submit(scheduler, "a", 20)
    runner = FakeRunner(scheduler)
    chunks = []
    for _ in range(3):
        plan = runner.step()
        chunks.append((plan.prefill.start, plan.prefill.end, plan.prefill.completes_prompt, len(plan.decode)))
    # The chunk that completes the prompt puts the request in that same step's decode batch.
    assert chunks == [(0, 8, False, 0), (8, 16, False, 0), (16, 20, True, 1)]
    assert state.status is Status.RUNNING and state.prefilled_tokens == 20
    assert len(state.generated) == 2  # first token from the prefill, second from the decode
    assert state.num_computed == 21 == state.cache.length


def test_running_requests_decode_while_the_next_one_prefills():
    scheduler = make_scheduler(prefill_chunk_tokens=4)
    runner = FakeRunner(scheduler)
    first = submit(scheduler, "first", 3, max_new_tokens=50)
    runner.step()
    second = submit(scheduler, "second", 10, session="t", max_new_tokens=50)
    plans = [runner.step() for _ in range(3)]
    assert [plan.prefill.request for plan in plans] == [second] * 3
    assert [plan.decode for plan in plans] == [[first], [first], [first, second]]
    assert scheduler.running == [first, second]


def test_only_the_head_of_the_queue_prefills_and_a_full_batch_admits_nobody():
    scheduler = make_scheduler(max_batch_size=1)
    runner = FakeRunner(scheduler)
    first = submit(scheduler, "first", 4, max_new_tokens=3)
    second = submit(scheduler, "second", 4, session="t", max_new_tokens=3)
    plan = runner.step()
    assert plan.prefill.request is first
    plan = runner.step()  # first's third token ends it; the batch was full while it ran
    assert plan.prefill is None and plan.decode == [first] and second.status is Status.WAITING
    assert first.status is Status.DONE
    assert runner.step().prefill.request is second


def test_admission_reuses_the_sessions_idle_cache_up_to_the_last_prompt_position():
    scheduler = make_scheduler(prefill_chunk_tokens=64)
    scheduler.store.put("s", CacheEntry(FakeCache(12), list(range(12))))
    state = submit(scheduler, "a", 12)
    plan = scheduler.schedule()
    admission = plan.prefill.admission
    # The last position is always fed again: its logits give the first token.
    assert (admission.reuse_tokens, plan.prefill.start, plan.prefill.end) == (11, 11, 12)
    assert admission.from_entry is not None and admission.from_request is None
    assert len(scheduler.store) == 0  # taken: an entry in use is never evicted or shared
    assert admission.capacity == 12 + 5
    assert state.cached_tokens == 11


def test_admission_copies_a_live_request_of_the_session_when_it_shares_more():
    scheduler = make_scheduler(prefill_chunk_tokens=64)
    runner = FakeRunner(scheduler)
    scheduler.store.put("s", CacheEntry(FakeCache(3), [0, 1, 2]))
    scheduler.store.put("other", CacheEntry(FakeCache(30), list(range(30))))
    leader = submit(scheduler, "leader", 20, max_new_tokens=50)
    runner.step()
    follower = submit(scheduler, "follower", 16)
    admission = scheduler.schedule().prefill.admission
    assert admission.from_request is leader and admission.from_entry is None
    assert admission.reuse_tokens == 15
    assert follower.num_computed == 15
    assert scheduler.store.peek("other") is not None  # another session's cache is never considered


def test_missing_media_rows_are_rejected_before_the_store_is_touched():
    scheduler = make_scheduler()
    image = [TokenSegment((1, 2)), EmbeddingSegment("img", None, 3), TokenSegment((9,))]
    scheduler.store.put("s", CacheEntry(FakeCache(3), [1, 2, ("img", 0)]))
    state = submit(scheduler, "a", image)
    plan = scheduler.schedule()
    assert plan.prefill is None
    [(rejected, error)] = plan.rejected
    assert rejected is state and isinstance(error, MissingMediaRows) and error.content_id == "img"
    assert scheduler.store.peek("s") is not None

    scheduler.detach(state)
    scheduler.store.put("s", CacheEntry(FakeCache(5), [1, 2, ("img", 0), ("img", 1), ("img", 2)]))
    submit(scheduler, "b", image)
    plan = scheduler.schedule()
    assert plan.rejected == [] and plan.prefill.admission.reuse_tokens == 5


def test_rows_sent_again_need_no_cache():
    scheduler = make_scheduler()
    submit(scheduler, "a", [TokenSegment((1,)), EmbeddingSegment("img", FakeRows(), 3)])
    plan = scheduler.schedule()
    assert plan.rejected == [] and (plan.prefill.start, plan.prefill.end) == (0, 4)


def test_finish_reasons_from_token_counts():
    scheduler = make_scheduler(max_context_tokens=12)
    state = submit(scheduler, "a", 8, max_new_tokens=3, stop=(99,))
    state.generated = [1]
    assert scheduler.finish_reason(state) is None
    state.generated = [1, 99]
    assert scheduler.finish_reason(state) == "stop"
    state.generated = [1, 2, 3]
    assert scheduler.finish_reason(state) == "length"
    long_reply = submit(scheduler, "b", 8, max_new_tokens=50)
    long_reply.generated = [1, 2, 3, 4]  # 8 + 4 fills the 12-token context
    assert scheduler.finish_reason(long_reply) == "length"


def test_a_finished_request_stores_exactly_the_positions_it_fed():
    scheduler = make_scheduler()
    runner = FakeRunner(scheduler)
    state = submit(scheduler, "a", 6, max_new_tokens=3)
    while state.status is not Status.DONE:
        runner.step()
    entry = scheduler.store.peek("s")
    # The last sampled token was never fed back.
    assert entry.keys == [0, 1, 2, 3, 4, 5, 7, 7] and entry.cache.length == 8
    assert not scheduler.has_work()


def test_a_released_session_does_not_get_its_cache_back():
    scheduler = make_scheduler()
    runner = FakeRunner(scheduler)
    scheduler.store.put("s", CacheEntry(FakeCache(2), [0, 1]))
    scheduler.store.put("t", CacheEntry(FakeCache(2), [0, 1]))
    running = submit(scheduler, "a", 4, session="u", max_new_tokens=50)
    runner.step()
    scheduler.release_session("s")
    scheduler.release_session("u")
    assert scheduler.store.peek("s") is None and scheduler.store.peek("t") is not None
    scheduler.finish(running)
    assert scheduler.store.peek("u") is None


def test_a_cancelled_waiting_request_leaves_the_queue():
    scheduler = make_scheduler(max_batch_size=1)
    runner = FakeRunner(scheduler)
    submit(scheduler, "a", 4, max_new_tokens=50)
    runner.step()
    waiting = submit(scheduler, "b", 4, session="t")
    scheduler.finish(waiting)  # a cancel before admission: nothing to store
    assert waiting.status is Status.DONE and list(scheduler.waiting) == []
    assert scheduler.get("b") is None and scheduler.store.peek("t") is None


def test_the_scheduler_tests_pass_without_torch():
    """Runs this file again in a fresh interpreter where importing torch fails."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import pytest\n"
        f"code = pytest.main([{__file__!r}, '-q', '--noconftest', '-p', 'no:cacheprovider', "
        "'-k', 'not without_torch'])\n"
        "assert 'torch' not in [name for name, module in sys.modules.items() if module is not None]\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout

"""Continuous-batching generation over `Qwen2ForCausalLM`, on the shared engine loop (one worker thread).

The gRPC event loop only calls `submit` / `cancel` / `release_session` / `stats`, which validate and post
a command; every model step runs on the engine thread (torch releases the GIL while it computes), and
events go back through the caller's `on_event`, which is called on the engine thread.

One step = the commands queued since the last one (submits, cancels, releases), then the scheduler's
plan (`scheduler.py`: at most one prefill chunk, one batched decode) executed by the runner
(`runner.py`), then the events of what came out. Session caches between turns: `kv_cache.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace

import torch

from services.llm.kv_cache import DEFAULT_KV_CACHE_MAX_TOKENS, SessionCacheStore
from services.llm.model import Qwen2ForCausalLM
from services.llm.requests import (
    ContextTooLong,
    EmbeddingSegment,
    EngineBusy,
    EngineStats,
    EngineStopped,
    Event,
    EventCallback,
    FailedEvent,
    FinishedEvent,
    GenerationFailed,
    GenerationRequest,
    InvalidRequest,
    MissingMediaRows,
    Segment,
    TokenEvent,
    TokenSegment,
    validate_request,
)
from services.llm.runner import ModelRunner
from services.llm.scheduler import PrefillChunk, RequestState, Scheduler
from shared.engine_loop import EngineLoop

# The request and event types are part of the engine's API; servicers import them from here.
__all__ = [
    "DEFAULT_KV_CACHE_MAX_TOKENS", "ContextTooLong", "EmbeddingSegment", "EngineBusy", "EngineStats", "EngineStopped", "Event",
    "EventCallback", "FailedEvent", "FinishedEvent", "GenerationFailed", "GenerationRequest", "InvalidRequest",
    "LLMEngine", "MissingMediaRows", "Segment", "TokenEvent", "TokenSegment",
]

logger = logging.getLogger(__name__)


@dataclass
class _Counters:
    steps: int = 0  # batched decode steps
    prefill_chunks: int = 0
    decode_tokens_total: int = 0
    prefill_tokens_total: int = 0
    reused_tokens_total: int = 0
    finished_total: int = 0
    cancelled_total: int = 0
    failed_total: int = 0


class LLMEngine(EngineLoop):
    stopped_error = EngineStopped

    def __init__(
        self,
        model: Qwen2ForCausalLM,
        *,
        device: str | torch.device,
        max_batch_size: int = 16,
        prefill_chunk_tokens: int = 256,
        max_context_tokens: int,
        kv_cache_max_sessions: int = 64,
        kv_cache_max_tokens: int = DEFAULT_KV_CACHE_MAX_TOKENS,
        max_waiting_requests: int | None = None,
        busy_retry_after_ms: int = 1000,
    ):
        if max_context_tokens > model.dims.max_position_embeddings:
            raise ValueError(
                f"max_context_tokens {max_context_tokens} exceeds the model's "
                f"{model.dims.max_position_embeddings} positions"
            )
        for name, value in (("max_batch_size", max_batch_size), ("prefill_chunk_tokens", prefill_chunk_tokens),
                            ("max_context_tokens", max_context_tokens)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        device = torch.device(device)
        if device.type != model.device.type:
            raise ValueError(f"engine device {device} but the model is on {model.device}")
        super().__init__(name="llm")
        self.model = model
        self.device = device
        self.max_batch_size = max_batch_size
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.max_context_tokens = max_context_tokens
        # Requests held at once (running + waiting); None = no bound (tests and tools that feed it directly).
        self.max_in_flight = None if max_waiting_requests is None else max_batch_size + max_waiting_requests
        self.busy_retry_after_ms = busy_retry_after_ms
        self._hidden = model.dims.hidden_size
        self._vocab = model.dims.vocab_size

        # Shared with caller threads, guarded by the inbox lock.
        self._live_ids: set[str] = set()
        self._published = EngineStats()

        # Engine-thread state.
        self._store = SessionCacheStore(max_sessions=kv_cache_max_sessions, max_tokens=kv_cache_max_tokens)
        self._scheduler = Scheduler(max_batch_size=max_batch_size, prefill_chunk_tokens=prefill_chunk_tokens,
                                    max_context_tokens=max_context_tokens, store=self._store)
        self._runner = ModelRunner(model, device)
        self._counters = _Counters()

    # ---------------------------------------------------------------------------- caller-thread interface

    def submit(self, request: GenerationRequest, on_event: EventCallback) -> None:
        """Validate and enqueue. Raises InvalidRequest / ContextTooLong for a bad request, EngineBusy when
        `max_in_flight` requests are already held, EngineStopped when not running; everything later arrives through `on_event`, called on the engine thread: it must
        only hand the event over (e.g. `loop.call_soon_threadsafe`), since it delays every running request."""
        validate_request(request, vocab_size=self._vocab, hidden_size=self._hidden,
                         max_context_tokens=self.max_context_tokens)
        state = RequestState.create(request, on_event)
        with self.inbox_lock:
            if request.request_id in self._live_ids:
                raise InvalidRequest(f"request_id {request.request_id!r} is already in flight")
            if self.max_in_flight is not None and len(self._live_ids) >= self.max_in_flight:
                raise EngineBusy(len(self._live_ids), self.busy_retry_after_ms)
            self.post(lambda: self._scheduler.add(state))
            self._live_ids.add(request.request_id)

    def cancel(self, request_id: str) -> None:
        """Takes effect at the next step boundary; unknown or finished ids are ignored."""
        self.post_if_running(lambda: self._on_cancel(request_id))

    def release_session(self, session_id: str) -> None:
        """Drop the session's cached KV; a request of the session still running will not store its own."""
        self.post_if_running(lambda: self._on_release(session_id))

    def stats(self) -> EngineStats:
        loop = self.loop_stats()
        with self.inbox_lock:
            published = self._published
            # Submits still in the inbox count as waiting.
            in_flight = len(self._live_ids)
        return replace(published, waiting=max(published.waiting, in_flight - published.running), loop=loop)

    # ------------------------------------------------------------------------- commands (engine thread)

    def _on_cancel(self, request_id: str) -> None:
        state = self._scheduler.get(request_id)
        if state is not None:
            self._counters.cancelled_total += 1
            self._finish(state, "cancelled")

    def _on_release(self, session_id: str) -> None:
        self._scheduler.release_session(session_id)
        self._publish_stats()

    # ---------------------------------------------------------------------------- loop hooks (engine thread)

    def worker_context(self) -> AbstractContextManager:
        return torch.inference_mode()

    def has_work(self) -> bool:
        return self._scheduler.has_work()

    def step(self) -> None:
        plan = self._scheduler.schedule()
        for state, error in plan.rejected:
            self._fail(state, error)
        if plan.prefill is not None:
            self._run_prefill(plan.prefill)
        batch = self._scheduler.still_running(plan.decode)
        if batch:
            self._run_decode(batch)
        self._publish_stats()

    def on_step_error(self, error: Exception) -> None:
        """A bug outside the model calls (those fail their own requests): fail everything in flight."""
        for state in self._scheduler.live():
            self._fail(state, GenerationFailed("the LLM engine failed"), cause=error)

    def on_stop(self) -> None:
        for state in [*self._scheduler.running, *self._scheduler.waiting]:
            self._fail(state, EngineStopped("the LLM engine stopped"))
        self._store.clear()
        self._publish_stats()

    # ---------------------------------------------------------------------------------- running the plan

    def _run_prefill(self, chunk: PrefillChunk) -> None:
        state = chunk.request
        try:
            if chunk.admission is not None:
                self._runner.admit(state, chunk.admission)
                self._counters.reused_tokens_total += chunk.admission.reuse_tokens
            logits = self._runner.prefill(chunk)
            self._counters.prefill_chunks += 1
            self._counters.prefill_tokens_total += chunk.end - chunk.start
            self._scheduler.prefilled(chunk)
            if not chunk.completes_prompt:
                return
            token = self._runner.sample(logits[None], [state])[0]
        except MissingMediaRows as error:
            self._fail(state, error)
            return
        except Exception as error:  # noqa: BLE001 - any model failure fails this request, not the engine
            logger.exception("prefill failed for request %s", state.request_id)
            self._fail(state, GenerationFailed("the model failed while reading the prompt"), cause=error)
            return
        self._scheduler.start_decoding(state)
        self._accept_token(state, token)

    def _run_decode(self, batch: Sequence[RequestState]) -> None:
        try:
            tokens = self._runner.decode(batch)
        except Exception as error:  # noqa: BLE001 - a failed step fails its batch, not the engine
            logger.exception("decode step failed for a batch of %d", len(batch))
            for state in batch:
                self._fail(state, GenerationFailed("the model failed while generating"), cause=error)
            return
        self._counters.steps += 1
        self._counters.decode_tokens_total += len(batch)
        self._scheduler.decoded(batch)
        for state, token in zip(batch, tokens):
            self._accept_token(state, token)

    def _accept_token(self, state: RequestState, token: int) -> None:
        state.generated.append(token)
        if not self._emit(state, TokenEvent(token)):
            return
        reason = self._scheduler.finish_reason(state)
        if reason is not None:
            self._finish(state, reason)

    # -------------------------------------------------------------------------------------------- endings

    def _forget(self, state: RequestState) -> None:
        with self.inbox_lock:
            self._live_ids.discard(state.request_id)

    def _finish(self, state: RequestState, reason: str) -> None:
        self._scheduler.finish(state)
        self._forget(state)
        self._counters.finished_total += 1
        self._publish_stats()
        now = time.perf_counter_ns()
        admitted = state.admitted_ns or now
        first_token = state.first_token_ns or now
        self._emit(state, FinishedEvent(
            reason=reason,
            prompt_tokens=state.prompt_tokens,
            cached_tokens=state.cached_tokens,
            prefilled_tokens=state.prefilled_tokens,
            generated_tokens=len(state.generated),
            queue_ns=admitted - state.submitted_ns,
            prefill_ns=first_token - admitted,
            decode_ns=now - first_token,
            batch_size_max=state.batch_size_max,
        ), final=True)

    def _fail(self, state: RequestState, error: Exception, *, cause: Exception | None = None) -> None:
        """A failed request's cache may be half written: it is dropped, never stored."""
        if cause is not None:
            error.__cause__ = cause
        self._scheduler.detach(state)
        self._forget(state)
        self._counters.failed_total += 1
        self._publish_stats()
        self._emit(state, FailedEvent(error), final=True)

    def _emit(self, state: RequestState, event: Event, *, final: bool = False) -> bool:
        """Deliver an event; a callback that raises has lost its consumer, so its request is cancelled.
        Returns whether the request is still live."""
        try:
            state.on_event(event)
        except Exception:  # noqa: BLE001 - a broken consumer must not take the engine down
            logger.exception("on_event raised for request %s", state.request_id)
            if not final:
                self._counters.cancelled_total += 1
                self._finish(state, "cancelled")
                return False
        return not final

    def _publish_stats(self) -> None:
        live = self._scheduler.live()
        active_bytes = sum(state.cache.nbytes for state in live if state.cache is not None)
        stats = EngineStats(
            running=len(self._scheduler.running),
            waiting=len(self._scheduler.waiting),
            cached_sessions=len(self._store),
            cached_tokens=self._store.tokens,
            evicted_sessions_total=self._store.evicted_total,
            kv_cache_bytes=self._store.nbytes + active_bytes,
            **asdict(self._counters),
        )
        with self.inbox_lock:
            self._published = stats

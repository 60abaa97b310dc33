"""Runs one turn: lock the session, build the prompt, stream the reply, record what the user got."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Callable

from services.orchestrator import metrics
from services.orchestrator.admission import Admission, AdmissionRefused
from services.orchestrator.backends import AudioBackend, BackendError, CallIds, LLMFacts, StageTime
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.delivery import Outgoing
from services.orchestrator.media import MediaLibrary, MediaRejected
from services.orchestrator.outbox import Outbox, StreamSink, outcome_to_proto
from services.orchestrator.pipeline import ReplyPipeline, ReplyRequest, ReplyResult
from services.orchestrator.prompt import PromptBuilder, PromptTooLong, UserMessage
from services.orchestrator.records import SessionRecord, TurnOutcome, TurnRecord
from services.orchestrator.sessions import (
    STORE_RETRY_HINT_MS,
    SessionNotFound,
    SessionStore,
    StoreUnavailable,
    TurnInProgress,
)
from services.orchestrator.turn import CancelReason, TurnHandle
from services.orchestrator.turn_input import PendingTurn
from shared import tracing
from vita.assistant.v1 import assistant_pb2


@dataclass
class ConversationDeps:
    settings: OrchestratorSettings
    store: SessionStore
    pipeline: ReplyPipeline
    prompts: PromptBuilder
    llm_facts: LLMFacts
    media: MediaLibrary
    audio: AudioBackend | None = None
    admission: Admission | None = None


class _TurnFailed(Exception):
    """The turn ends with this error; the session is left as it was (a failed turn is not recorded)."""

    def __init__(self, code: str, message: str, retry_after_ms: int = 0):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


class TurnRunner:
    def __init__(self, deps: ConversationDeps, tenant: str, session: SessionRecord, outbox: Outbox,
                 handle: TurnHandle, pending: PendingTurn, on_session: Callable[[SessionRecord], None]):
        self._deps = deps
        self._tenant = tenant
        self._session = session
        self._outbox = outbox
        self._handle = handle
        self._pending = pending
        self._on_session = on_session
        self._history: list[TurnRecord] = []
        self._record = TurnRecord(turn_id=pending.turn_id, started_unix_ms=int(time.time() * 1000),
                                  user_text=pending.text)
        self._result = ReplyResult()
        # Vision and audio encodes of this turn; kept apart from the reply's stages, which a re-prefill
        # starts over.
        self._media_stages: list[StageTime] = list(pending.media_timings)
        self._outcome = TurnOutcome.FAILED
        self._prompt_tokens = 0
        self._started_ns = time.perf_counter_ns()

    @property
    def _turn_id(self) -> str:
        return self._pending.turn_id

    async def run(self) -> None:
        final: Outgoing | None = None  # completion or error: sent after the lock is released
        locking = False  # the lock may be ours (a cancel can land after Redis took it, before we heard)
        refresher: asyncio.Task | None = None
        try:
            await self._handle.wait_previous()  # a turn launched while the last one was being stopped
            locking = True
            try:
                await self._deps.store.acquire_turn(self._tenant, self._session.session_id, self._turn_id)
            except TurnInProgress as busy:
                locking = False
                raise _TurnFailed("FAILED_PRECONDITION",
                                  f"turn {busy.running_turn_id} is still running on this session (another stream)") from None
            refresher = asyncio.create_task(self._refresh_lock())
            metrics.ACTIVE_TURNS.inc()
            request = await self._prepare()
            self._announce()
            await self._reply(request)
            self._flush_if_stopped()
            await self._record_turn()
            final = Outgoing(turn=self._handle.delivery, build=self._completed_event)
        except _TurnFailed as failed:
            self._handle.fail()
            final = self._outbox.error_item(self._turn_id, failed.code, failed.message, failed.retry_after_ms)
        except StoreUnavailable as error:
            self._handle.fail()
            final = self._outbox.error_item(self._turn_id, "UNAVAILABLE", str(error), STORE_RETRY_HINT_MS)
        except asyncio.CancelledError:
            if self._handle.cancel_reason is None:
                raise  # not a cancel of this turn: the server is stopping
            # Stopped before its reply (nothing was said, nothing is recorded); the cancel is still
            # answered, with the cancelled completion.
            asyncio.current_task().uncancel()
            self._outcome = self._handle.outcome(self._result)
            final = Outgoing(turn=self._handle.delivery, build=self._completed_event)
        finally:
            if refresher is not None:
                refresher.cancel()
                self._observe()
            if locking:
                try:
                    await asyncio.shield(self._deps.store.release_turn(self._tenant, self._session.session_id, self._turn_id))
                except StoreUnavailable:
                    pass  # the store is down: the lock expires by its TTL
            # Last, after the lock is released: a client may start its next turn the moment it reads this.
            if final is not None:
                self._handle.settle()
                self._outbox.send(final)

    # ----- the steps -----

    async def _refresh_lock(self) -> None:
        interval = self._deps.settings.turn_lock_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            await self._deps.store.refresh_turn(self._tenant, self._session.session_id, self._turn_id)

    async def _admit(self) -> None:
        """Admission control (services/orchestrator/admission.py): turns in flight here, the tenant's turns
        per minute. The slot is freed when the turn's task ends, however it ends."""
        if self._deps.admission is None:
            return
        try:
            release = await self._deps.admission.start_turn(self._tenant, self._session.session_id)
        except AdmissionRefused as refused:
            raise _TurnFailed(refused.code, refused.message, refused.retry_after_ms) from None
        asyncio.current_task().add_done_callback(lambda _: release())

    async def _prepare(self) -> ReplyRequest:
        """Reloads the session and its history, encodes the turn's media and builds the prompt."""
        await self._admit()
        store, pending = self._deps.store, self._pending
        try:
            self._session = await store.get(self._tenant, self._session.session_id)
            self._on_session(self._session)
            self._history = await store.history(self._tenant, self._session.session_id)
            ids = CallIds(self._session.session_id, pending.turn_id, pending.seed)
            encoded = await self._deps.media.encode(self._tenant, ids, pending.media, self._media_stages)
            self._record.media = [ref for _, ref in encoded]
            audio = None
            if pending.audio is not None:
                audio, ref = pending.audio
                self._record.media.append(ref)
            user = UserMessage(text=pending.text, visual=[(ref.kind, piece) for piece, ref in encoded], audio=audio)
            config = self._session.config
            prompt, self._prompt_tokens = self._deps.prompts.build(
                self._history, user,
                max_context_tokens=self._deps.llm_facts.max_context_tokens,
                reply_reserve_tokens=pending.max_reply,
                max_history_turns=config.max_history_turns,
            )
        except SessionNotFound:
            raise _TurnFailed("NOT_FOUND", "the session no longer exists") from None
        except PromptTooLong as too_long:
            raise _TurnFailed("INVALID_ARGUMENT", str(too_long)) from None
        except (MediaRejected, BackendError) as error:
            raise _TurnFailed(error.code, error.message) from None
        return ReplyRequest(ids=ids, prompt=prompt, max_new_tokens=pending.max_reply,
                            temperature=config.temperature, speech_output=config.speech_output)

    def _announce(self) -> None:
        started = assistant_pb2.TurnStarted(input=self._pending.input_kind, prompt_tokens=self._prompt_tokens)
        self._outbox.send_event(self._turn_id, turn_started=started)

    async def _reply(self, request: ReplyRequest) -> None:
        try:
            try:
                await self._stream(request)
            except BackendError as error:
                if error.code != "FAILED_PRECONDITION" or self._result.token_ids:
                    raise
                # The LLM no longer holds past media in its cache (cold session, other replica):
                # restore their rows and ask again. Nothing was delivered yet.
                refs = {ref.content_id: ref for turn in self._history for ref in turn.media}
                prompt = await self._deps.media.restore(request.ids, request.prompt, refs, self._media_stages)
                self._result = ReplyResult()
                await self._stream(replace(request, prompt=prompt))
        except (MediaRejected, BackendError) as error:
            self._handle.fail()
            if self._handle.kept_reply(self._result, self._session.config.speech_output)[0]:
                # Failed mid-reply after the user got part of it: history keeps that part. A reply of
                # which nothing was heard leaves the session as it was.
                await self._record_turn()
            raise _TurnFailed(error.code, error.message) from None

    async def _stream(self, request: ReplyRequest) -> None:
        """The reply streams in a task of its own, which is what a cancel stops: the turn itself goes on
        to record what was heard. `self._result` keeps what was produced either way."""
        reply = asyncio.create_task(
            self._deps.pipeline.run(request, StreamSink(self._outbox, self._handle.delivery), self._result)
        )
        self._handle.streaming(reply)
        try:
            await reply
        except asyncio.CancelledError:
            if not reply.cancelled() or asyncio.current_task().cancelling():
                raise  # the turn itself is being stopped

    def _flush_if_stopped(self) -> None:
        reason = self._handle.cancel_reason
        if reason is None:
            return
        flush = assistant_pb2.FLUSH_REASON_BARGE_IN if reason is CancelReason.BARGE_IN else assistant_pb2.FLUSH_REASON_CANCEL
        self._outbox.send_event(self._turn_id, playback_flush=assistant_pb2.PlaybackFlush(reason=flush))

    async def _record_turn(self) -> None:
        record = self._record
        record.reply_text, record.reply_token_ids = self._handle.kept_reply(
            self._result, self._session.config.speech_output
        )
        record.outcome = self._outcome = self._handle.outcome(self._result)
        await asyncio.shield(self._deps.store.append_turn(self._tenant, self._session.session_id, record))

    # ----- reporting -----

    def _stages(self) -> list[StageTime]:
        """Where the turn's time went: media encodes first, then the reply's LLM and speech stages."""
        return [*self._media_stages, *self._result.stages]

    def _completed_event(self) -> assistant_pb2.ServerEvent:
        delivery, result = self._handle.delivery, self._result
        ttft, ttfa, eos = delivery.timings_ms()
        stages = [
            assistant_pb2.StageTime(stage=s.stage, queue_ms=s.queue_ns / 1e6, compute_ms=s.compute_ns / 1e6)
            for s in self._stages()
        ]
        llm = result.llm_done
        completed = assistant_pb2.TurnCompleted(
            outcome=outcome_to_proto(self._outcome),
            timings=assistant_pb2.TurnTimings(
                ttft_ms=ttft, ttfa_ms=ttfa, eos_to_audio_ms=eos,
                total_ms=(time.perf_counter_ns() - self._started_ns) / 1e6, stages=stages,
            ),
            reply_text=self._record.reply_text,
            audio_samples=delivery.audio_samples,
            codec_tokens=result.codec_tokens,
            reply_tokens=len(result.token_ids),
            cached_prompt_tokens=llm.cached_tokens if llm else 0,
            prefilled_prompt_tokens=llm.prefilled_tokens if llm else 0,
        )
        return self._outbox.event(self._turn_id, turn_completed=completed)

    def _observe(self) -> None:
        outcome = self._outcome.value
        metrics.ACTIVE_TURNS.dec()
        metrics.TURNS.labels(outcome).inc()
        tracing.turn_outcome(outcome)
        metrics.TURN_SECONDS.labels(outcome).observe((time.perf_counter_ns() - self._started_ns) / 1e9)
        for stage in self._stages():
            if stage.queue_ns:
                metrics.STAGE_SECONDS.labels(stage.stage, "queue").observe(stage.queue_ns / 1e9)
            if stage.compute_ns:
                metrics.STAGE_SECONDS.labels(stage.stage, "compute").observe(stage.compute_ns / 1e9)

"""One Converse stream: client events in, server events out, one turn at a time.

Data and control travel differently (DESIGN conventions): reply text and audio are queued in order; a
cancel marks the turn dropped so its queued data is discarded, and stops the turn's task, whose
cancellation reaches the LLM and speech calls within one decode step.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from services.orchestrator import metrics
from services.orchestrator.backends import BackendError, CallIds, LLMFacts
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.delivery import Outgoing, TurnDelivery
from services.orchestrator.pipeline import ReplyPipeline, ReplyRequest, ReplyResult
from services.orchestrator.prompt import PromptBuilder, PromptTooLong, UserMessage
from services.orchestrator.records import SessionRecord, TurnRecord
from services.orchestrator.sessions import SessionNotFound, SessionStore, TurnInProgress
from vita.assistant.v1 import assistant_pb2

log = logging.getLogger(__name__)

# google.rpc.Code values carried by Error events.
CODES = {
    "INVALID_ARGUMENT": 3,
    "NOT_FOUND": 5,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
}
CLOSE = object()


class TurnRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ConversationDeps:
    settings: OrchestratorSettings
    store: SessionStore
    pipeline: ReplyPipeline
    prompts: PromptBuilder
    llm_facts: LLMFacts


class _StreamSink:
    """ReplySink that queues reply events on the stream, tagged with their turn."""

    def __init__(self, conversation: "Conversation", delivery: TurnDelivery):
        self._conversation = conversation
        self._delivery = delivery

    async def text(self, text: str, token_ids: tuple[int, ...]) -> None:
        event = self._conversation.event(self._delivery.turn_id, text_delta=assistant_pb2.TextDelta(text=text)) if text else None
        self._conversation.send(
            Outgoing(event=event, turn=self._delivery, droppable=True, text=text, token_ids=token_ids)
        )

    async def audio(self, pcm: bytes, sample_rate_hz: int, segment_index: int) -> None:
        event = self._conversation.event(
            self._delivery.turn_id,
            audio=assistant_pb2.AudioOut(pcm=pcm, sample_rate_hz=sample_rate_hz, segment_index=segment_index),
        )
        self._conversation.send(
            Outgoing(event=event, turn=self._delivery, droppable=True, audio_samples=len(pcm) // 2,
                     sample_rate_hz=sample_rate_hz)
        )

    async def suppressed(self) -> None:
        self._conversation.send(
            Outgoing(event=self._conversation.event(self._delivery.turn_id, reply_suppressed=assistant_pb2.ReplySuppressed()))
        )


class Conversation:
    def __init__(self, deps: ConversationDeps, tenant: str, session: SessionRecord):
        self._deps = deps
        self._tenant = tenant
        self.session = session
        self.outbound: asyncio.Queue[Outgoing | object] = asyncio.Queue()
        self._turn_task: asyncio.Task | None = None
        self._turn_delivery: TurnDelivery | None = None
        self._cancel_reason = "cancelled"

    # ----- sending -----

    def event(self, turn_id: str = "", **kind) -> assistant_pb2.ServerEvent:
        return assistant_pb2.ServerEvent(session_id=self.session.session_id, turn_id=turn_id, **kind)

    def send(self, item: Outgoing) -> None:
        self.outbound.put_nowait(item)

    def error_item(self, turn_id: str, code: str, message: str) -> Outgoing:
        metrics.ERRORS.labels(code).inc()
        return Outgoing(event=self.event(turn_id, error=assistant_pb2.Error(code=CODES[code], message=message)))

    def send_error(self, turn_id: str, code: str, message: str) -> None:
        self.send(self.error_item(turn_id, code, message))

    def close(self) -> None:
        self.outbound.put_nowait(CLOSE)

    # ----- client events -----

    @property
    def turn_running(self) -> bool:
        return self._turn_task is not None and not self._turn_task.done()

    def start_text_turn(self, message: assistant_pb2.UserTurn) -> None:
        turn_id = message.turn_id or uuid.uuid4().hex
        input_end_ns = time.perf_counter_ns()
        try:
            self._check_can_start(turn_id)
            text = message.text
            if not text.strip() and not message.media:
                raise TurnRejected("INVALID_ARGUMENT", "the turn has no text (empty or only whitespace)")
            if len(text) > self._deps.settings.max_text_chars:
                raise TurnRejected(
                    "INVALID_ARGUMENT",
                    f"the text is {len(text)} characters; the limit is {self._deps.settings.max_text_chars}",
                )
            if message.media:
                raise TurnRejected("FAILED_PRECONDITION", "images and video are not served by this deployment yet")
            max_reply = self._reply_limit(message)
        except TurnRejected as rejected:
            self.send_error(turn_id, rejected.code, rejected.message)
            return
        seed = message.seed if message.HasField("seed") else self.session.config.seed
        delivery = TurnDelivery(turn_id=turn_id, input_kind="text", input_end_ns=input_end_ns)
        record = TurnRecord(turn_id=turn_id, started_unix_ms=int(time.time() * 1000), user_text=text)
        self._launch(delivery, record, UserMessage(text=text), max_reply, seed)

    def cancel_turn(self, turn_id: str, reason: str = "cancelled") -> None:
        if not self.turn_running or (turn_id and self._turn_delivery and turn_id != self._turn_delivery.turn_id):
            self.send_error(turn_id, "FAILED_PRECONDITION", "no such turn is running")
            return
        self._cancel(reason)

    def _cancel(self, reason: str) -> None:
        self._cancel_reason = reason
        if self._turn_delivery is not None:
            self._turn_delivery.dropped = True  # queued text/audio of this turn is not sent
        self._turn_task.cancel()

    async def shutdown(self) -> None:
        """The stream ended (client left or the server stops): stop the turn, keep what was delivered."""
        if self.turn_running:
            self._cancel("cancelled")
            try:
                await asyncio.shield(self._turn_task)
            except asyncio.CancelledError:
                pass

    async def wait_idle(self) -> None:
        if self._turn_task is not None:
            await asyncio.shield(self._turn_task)

    # ----- turns -----

    def _check_can_start(self, turn_id: str) -> None:
        if self.turn_running:
            # FAILED_PRECONDITION, not ABORTED: retrying at once cannot succeed; the client must wait for
            # turn_completed, or send cancel (or barge in by voice) first.
            raise TurnRejected(
                "FAILED_PRECONDITION",
                f"turn {self._turn_delivery.turn_id} is still running on this session; wait for turn_completed or cancel it",
            )

    def _reply_limit(self, message: assistant_pb2.UserTurn) -> int:
        limit = self._deps.settings.max_reply_tokens_limit
        requested = message.max_reply_tokens if message.HasField("max_reply_tokens") else self.session.config.max_reply_tokens
        if not 0 < requested <= limit:
            raise TurnRejected("INVALID_ARGUMENT", f"max_reply_tokens must be between 1 and {limit}")
        return requested

    def _launch(self, delivery: TurnDelivery, record: TurnRecord, user: UserMessage, max_reply: int, seed: int | None) -> None:
        self._turn_delivery = delivery
        self._cancel_reason = "cancelled"
        self._turn_task = asyncio.create_task(self._run_turn(delivery, record, user, max_reply, seed))

    async def _run_turn(self, delivery: TurnDelivery, record: TurnRecord, user: UserMessage, max_reply: int,
                        seed: int | None) -> None:
        store, tenant, session_id = self._deps.store, self._tenant, self.session.session_id
        started = time.perf_counter_ns()
        try:
            await store.acquire_turn(tenant, session_id, delivery.turn_id)
        except TurnInProgress as busy:
            self.send_error(delivery.turn_id, "FAILED_PRECONDITION",
                            f"turn {busy.running_turn_id} is still running on this session (another stream)")
            return
        metrics.ACTIVE_TURNS.inc()
        refresher = asyncio.create_task(self._refresh_lock(delivery.turn_id))
        result = ReplyResult()
        outcome = "failed"
        final: Outgoing | None = None  # completion or error: sent after the lock is released
        try:
            try:
                self.session = await store.get(tenant, session_id)
                history = await store.history(tenant, session_id)
                prompt, prompt_tokens = self._deps.prompts.build(
                    history,
                    user,
                    max_context_tokens=self._deps.llm_facts.max_context_tokens,
                    reply_reserve_tokens=max_reply,
                    max_history_turns=self.session.config.max_history_turns,
                )
            except SessionNotFound:
                final = self.error_item(delivery.turn_id, "NOT_FOUND", "the session no longer exists")
                return
            except PromptTooLong as too_long:
                final = self.error_item(delivery.turn_id, "INVALID_ARGUMENT", str(too_long))
                return
            self.send(Outgoing(event=self.event(
                delivery.turn_id, turn_started=assistant_pb2.TurnStarted(input=delivery.input_kind, prompt_tokens=prompt_tokens)
            )))
            request = ReplyRequest(
                ids=CallIds(session_id, delivery.turn_id, seed),
                prompt=prompt,
                max_new_tokens=max_reply,
                temperature=self.session.config.temperature,
                speech_output=self.session.config.speech_output,
            )
            try:
                await self._deps.pipeline.run(request, _StreamSink(self, delivery), result)
                outcome = "suppressed" if result.suppressed else "completed"
            except asyncio.CancelledError:
                # Handled here on purpose: the turn still records what was delivered and reports it.
                asyncio.current_task().uncancel()
                outcome = self._cancel_reason
                self.send(Outgoing(event=self.event(delivery.turn_id, playback_flush=assistant_pb2.PlaybackFlush(reason=outcome))))
            except BackendError as error:
                final = self.error_item(delivery.turn_id, error.code, error.message)
                # The session is left as it was: a failed turn is not written to history.
                return
            if outcome in ("completed", "suppressed"):
                record.reply_token_ids, record.reply_text = list(result.token_ids), result.text
            else:
                # Only what reached the client: the ids of the text deltas that were sent.
                record.reply_token_ids, record.reply_text = list(delivery.token_ids), delivery.delivered_text()
            record.outcome = outcome
            await asyncio.shield(store.append_turn(tenant, session_id, record))
            final = Outgoing(turn=delivery, build=lambda: self._completed_event(delivery, result, outcome, started))
        finally:
            refresher.cancel()
            metrics.ACTIVE_TURNS.dec()
            metrics.TURNS.labels(outcome).inc()
            metrics.TURN_SECONDS.labels(outcome).observe((time.perf_counter_ns() - started) / 1e9)
            for stage in result.stages:
                if stage.queue_ns:
                    metrics.STAGE_SECONDS.labels(stage.stage, "queue").observe(stage.queue_ns / 1e9)
                if stage.compute_ns:
                    metrics.STAGE_SECONDS.labels(stage.stage, "compute").observe(stage.compute_ns / 1e9)
            await asyncio.shield(store.release_turn(tenant, session_id, delivery.turn_id))
            # Last, after the lock is released: a client may start its next turn the moment it reads this.
            if final is not None:
                self.send(final)

    async def _refresh_lock(self, turn_id: str) -> None:
        interval = self._deps.settings.turn_lock_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            await self._deps.store.refresh_turn(self._tenant, self.session.session_id, turn_id)

    def _completed_event(self, delivery: TurnDelivery, result: ReplyResult, outcome: str, started_ns: int):
        ttft, ttfa, eos = delivery.timings_ms()
        stages = [
            assistant_pb2.StageTime(stage=s.stage, queue_ms=s.queue_ns / 1e6, compute_ms=s.compute_ns / 1e6)
            for s in result.stages
        ]
        llm = result.llm_done
        completed = assistant_pb2.TurnCompleted(
            outcome=outcome,
            timings=assistant_pb2.TurnTimings(
                ttft_ms=ttft, ttfa_ms=ttfa, eos_to_audio_ms=eos,
                total_ms=(time.perf_counter_ns() - started_ns) / 1e6, stages=stages,
            ),
            reply_text=result.text if outcome in ("completed", "suppressed") else delivery.delivered_text(),
            audio_samples=delivery.audio_samples,
            codec_tokens=result.codec_tokens,
            reply_tokens=len(result.token_ids),
            cached_prompt_tokens=llm.cached_tokens if llm else 0,
            prefilled_prompt_tokens=llm.prefilled_tokens if llm else 0,
        )
        return self.event(delivery.turn_id, turn_completed=completed)

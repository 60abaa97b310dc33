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
from collections import deque
from dataclasses import dataclass, field, replace

from services.orchestrator import metrics
from services.orchestrator.backends import (
    AudioBackend,
    BackendError,
    CallIds,
    LLMFacts,
    MediaPiece,
    VadParameters,
    VoiceDropped,
    VoiceFormat,
    VoiceSpeechStarted,
    VoiceSpeechStopped,
    VoiceUtterance,
)
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.delivery import Outgoing, TurnDelivery
from services.orchestrator.pipeline import ReplyPipeline, ReplyRequest, ReplyResult
from services.orchestrator.prompt import PromptBuilder, PromptTooLong, UserMessage
from services.orchestrator.media import MediaLibrary, MediaRejected, MediaRequest, content_id
from services.orchestrator.records import MediaRef, SessionRecord, TurnRecord
from services.orchestrator.sessions import SessionNotFound, SessionStore, TurnInProgress
from services.orchestrator.voice import MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, VoiceInput
from shared import tracing
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
    media: MediaLibrary
    audio: AudioBackend | None = None


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


@dataclass
class PendingTurn:
    """A user turn as received, before its media are encoded."""

    turn_id: str
    input_kind: str  # "text" | "audio"
    input_end_ns: int
    text: str = ""
    media: list[MediaRequest] = field(default_factory=list)
    audio: tuple[MediaPiece, MediaRef] | None = None  # a streamed utterance, already encoded
    seed: int | None = None
    max_reply: int = 0
    speech_end_ns: int | None = None


class Conversation:
    def __init__(self, deps: ConversationDeps, tenant: str, session: SessionRecord):
        self._deps = deps
        self._tenant = tenant
        self.session = session
        self.outbound: asyncio.Queue[Outgoing | object] = asyncio.Queue()
        self._turn_task: asyncio.Task | None = None
        self._turn_delivery: TurnDelivery | None = None
        self._cancel_reason = "cancelled"
        self._voice: VoiceInput | None = None
        self._voice_format: VoiceFormat | None = None
        self._speech_end_ns: int | None = None
        self._camera: deque[tuple[int, bytes, int]] = deque(maxlen=deps.settings.max_camera_frames)
        # Push-to-talk: what the client's commit said about the utterance it closes.
        self._commit_turn_id = ""
        self._commit_media: list[MediaRequest] = []

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

    def configure_input(self, start: assistant_pb2.ConverseStart) -> None:
        if start.input_sample_rate_hz or start.input_encoding:
            encoding = "f32" if start.input_encoding == assistant_pb2.AUDIO_ENCODING_F32 else "pcm16"
            self._voice_format = VoiceFormat(start.input_sample_rate_hz, encoding)

    def start_text_turn(self, message: assistant_pb2.UserTurn) -> None:
        turn_id = message.turn_id or uuid.uuid4().hex
        input_end_ns = time.perf_counter_ns()
        try:
            self._check_can_start()
            text = message.text
            if not text.strip() and not message.media:
                raise TurnRejected("INVALID_ARGUMENT", "the turn has no text (empty or only whitespace)")
            if len(text) > self._deps.settings.max_text_chars:
                raise TurnRejected(
                    "INVALID_ARGUMENT",
                    f"the text is {len(text)} characters; the limit is {self._deps.settings.max_text_chars}",
                )
            media = self._media_requests(message.media)
            max_reply = self._reply_limit(message.max_reply_tokens if message.HasField("max_reply_tokens") else None)
        except TurnRejected as rejected:
            self.send_error(turn_id, rejected.code, rejected.message)
            return
        seed = message.seed if message.HasField("seed") else self.session.config.seed
        self._launch(PendingTurn(turn_id, "text", input_end_ns, text=text, media=media, seed=seed, max_reply=max_reply))

    def cancel_turn(self, turn_id: str, reason: str = "cancelled") -> None:
        if not self.turn_running or (turn_id and self._turn_delivery and turn_id != self._turn_delivery.turn_id):
            self.send_error(turn_id, "FAILED_PRECONDITION", "no such turn is running")
            return
        self._cancel(reason)

    def add_camera_frame(self, frame: assistant_pb2.CameraFrame) -> None:
        if not frame.jpeg:
            self.send_error("", "INVALID_ARGUMENT", "a camera frame needs JPEG bytes")
            return
        self._camera.append((frame.timestamp_ms, frame.jpeg, time.monotonic_ns()))

    async def append_audio(self, pcm: bytes) -> None:
        voice = self._voice_input()
        if voice is not None:
            await voice.append(pcm)

    async def commit_audio(self, commit: assistant_pb2.AudioCommit) -> None:
        voice = self._voice_input()
        if voice is None:
            return
        try:
            self._commit_media = self._media_requests(commit.media)
        except TurnRejected as rejected:
            self.send_error(commit.turn_id, rejected.code, rejected.message)
            return
        self._commit_turn_id = commit.turn_id
        self._speech_end_ns = time.perf_counter_ns()
        await voice.commit()

    def _voice_input(self) -> VoiceInput | None:
        if self._voice is not None:
            return self._voice
        if self._deps.audio is None:
            self.send_error("", "FAILED_PRECONDITION", "audio input is not served by this deployment")
            return None
        fmt = self._voice_format
        if fmt is None or not MIN_SAMPLE_RATE_HZ <= fmt.sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
            declared = "no sample rate" if fmt is None or not fmt.sample_rate_hz else f"{fmt.sample_rate_hz} Hz"
            self.send_error(
                "", "INVALID_ARGUMENT",
                f"declare the audio's sample rate in `start` (input_sample_rate_hz between {MIN_SAMPLE_RATE_HZ} "
                f"and {MAX_SAMPLE_RATE_HZ}); got {declared}",
            )
            return None
        vad = self.session.config.vad
        self._voice = VoiceInput(
            self._deps.audio,
            CallIds(self.session.session_id, f"voice-{uuid.uuid4().hex[:8]}"),
            fmt,
            VadParameters(**vad.model_dump()),
            self._on_voice_event,
            lambda error: self.send_error("", error.code, error.message),
        )
        return self._voice

    async def _on_voice_event(self, event) -> None:
        if isinstance(event, VoiceSpeechStarted):
            self.send(Outgoing(event=self.event(speech_started=assistant_pb2.SpeechStarted(offset_ms=event.offset_ms))))
            if self.turn_running:
                # Barge-in: the user talks over the reply. Stop it now (LLM, speech, queued audio) and
                # tell the client to drop what it has queued; the new utterance becomes the next turn.
                self._cancel("barged_in")
        elif isinstance(event, VoiceSpeechStopped):
            self._speech_end_ns = time.perf_counter_ns()
            self.send(Outgoing(event=self.event(speech_stopped=assistant_pb2.SpeechStopped(offset_ms=event.offset_ms))))
        elif isinstance(event, VoiceUtterance):
            await self._start_audio_turn(event)
        elif isinstance(event, VoiceDropped) and event.reason == "too_long":
            limit = self.session.config.vad.max_utterance_ms
            self.send_error("", "RESOURCE_EXHAUSTED",
                            f"the utterance ran past the {limit} ms limit (vad.max_utterance_ms) and was discarded")

    async def _start_audio_turn(self, utterance: VoiceUtterance) -> None:
        turn_id = self._commit_turn_id or uuid.uuid4().hex
        media = self._commit_media
        self._commit_turn_id, self._commit_media = "", []
        speech_end_ns = self._speech_end_ns or time.perf_counter_ns()
        self._speech_end_ns = None
        if self.turn_running:
            # A barged-in reply is still recording what it delivered: the new turn follows it.
            await self.wait_idle()
        key = content_id("audio", utterance.pcm16k)
        blob_key = await self._deps.store.put_blob(self._tenant, key, utterance.pcm16k)
        piece = MediaPiece(key, utterance.clip.num_rows, utterance.clip.rows)
        self._deps.media.remember(piece)
        ref = MediaRef(kind="audio", content_id=key, num_rows=piece.num_rows, blob_key=blob_key, source="audio")
        self._launch(PendingTurn(
            turn_id, "audio", speech_end_ns, media=media, audio=(piece, ref), seed=self.session.config.seed,
            max_reply=self.session.config.max_reply_tokens, speech_end_ns=speech_end_ns,
        ))

    def _cancel(self, reason: str) -> None:
        self._cancel_reason = reason
        if self._turn_delivery is not None:
            self._turn_delivery.dropped = True  # queued text/audio of this turn is not sent
        self._turn_task.cancel()

    async def shutdown(self) -> None:
        """The stream ended (client left or the server stops): stop the turn, keep what was delivered."""
        if self._voice is not None:
            await self._voice.close()
        if self.turn_running:
            self._cancel("cancelled")
            try:
                await asyncio.shield(self._turn_task)
            except asyncio.CancelledError:
                pass

    async def wait_idle(self) -> None:
        if self._turn_task is not None:
            try:
                await asyncio.shield(self._turn_task)
            except asyncio.CancelledError:
                if not self._turn_task.done():
                    raise

    # ----- turns -----

    def _check_can_start(self) -> None:
        if self.turn_running:
            # FAILED_PRECONDITION, not ABORTED: retrying at once cannot succeed; the client must wait for
            # turn_completed, or send cancel (or barge in by voice) first.
            raise TurnRejected(
                "FAILED_PRECONDITION",
                f"turn {self._turn_delivery.turn_id} is still running on this session; wait for turn_completed or cancel it",
            )

    def _reply_limit(self, requested: int | None) -> int:
        limit = self._deps.settings.max_reply_tokens_limit
        requested = self.session.config.max_reply_tokens if requested is None else requested
        if not 0 < requested <= limit:
            raise TurnRejected("INVALID_ARGUMENT", f"max_reply_tokens must be between 1 and {limit}")
        return requested

    def _media_requests(self, inputs) -> list[MediaRequest]:
        settings = self._deps.settings
        if len(inputs) > settings.max_media_per_turn:
            raise TurnRejected(
                "INVALID_ARGUMENT",
                f"the turn carries {len(inputs)} media items; the limit is {settings.max_media_per_turn} per turn",
            )
        requests = []
        for position, item in enumerate(inputs):
            kind = item.WhichOneof("kind")
            data = getattr(item, kind) if kind else b""
            if not data:
                raise TurnRejected("INVALID_ARGUMENT", f"media item {position} is empty")
            if len(data) > settings.max_media_bytes:
                raise TurnRejected(
                    "INVALID_ARGUMENT",
                    f"media item {position} is {len(data)} bytes; the limit is {settings.max_media_bytes} bytes",
                )
            max_tiles = item.max_tiles or self.session.config.max_image_tiles
            if not 1 <= max_tiles <= 12:
                raise TurnRejected("INVALID_ARGUMENT", "max_tiles must be between 1 and 12")
            requests.append(MediaRequest(kind=kind, data=data, max_tiles=max_tiles))
        if requests and not self._deps.media.vision_enabled:
            raise TurnRejected("FAILED_PRECONDITION", "images and video are not served by this deployment")
        return requests

    def _camera_request(self) -> MediaRequest | None:
        """The live camera frames of the last seconds become the turn's video."""
        horizon = time.monotonic_ns() - int(self._deps.settings.camera_window_s * 1e9)
        frames = tuple((ts, jpeg) for ts, jpeg, received in self._camera if received >= horizon)
        self._camera.clear()
        if not frames or not self._deps.media.vision_enabled:
            return None
        return MediaRequest(kind="frames", frames=frames)

    def _launch(self, pending: PendingTurn) -> None:
        camera = self._camera_request()
        if camera is not None:
            pending.media.append(camera)
        delivery = TurnDelivery(
            turn_id=pending.turn_id, input_kind=pending.input_kind, input_end_ns=pending.input_end_ns,
            speech_end_ns=pending.speech_end_ns,
        )
        self._turn_delivery = delivery
        self._cancel_reason = "cancelled"
        # One trace per turn (shared.tracing; no-op spans when tracing is off).
        self._turn_task = asyncio.create_task(tracing.turn_span(
            self._run_turn(pending, delivery),
            session_id=self.session.session_id, turn_id=pending.turn_id, input_kind=pending.input_kind,
        ))

    async def _prepare(self, pending: PendingTurn, record: TurnRecord, history: list[TurnRecord]):
        """Encodes the turn's media and builds the prompt."""
        ids = CallIds(self.session.session_id, pending.turn_id, pending.seed)
        encoded = await self._deps.media.encode(self._tenant, ids, pending.media)
        visual = [(ref.kind, piece) for piece, ref in encoded]
        record.media = [ref for _, ref in encoded]
        audio = None
        if pending.audio is not None:
            audio = pending.audio[0]
            record.media.append(pending.audio[1])
        user = UserMessage(text=pending.text, visual=visual, audio=audio)
        return self._deps.prompts.build(
            history,
            user,
            max_context_tokens=self._deps.llm_facts.max_context_tokens,
            reply_reserve_tokens=pending.max_reply,
            max_history_turns=self.session.config.max_history_turns,
        )

    async def _run_turn(self, pending: PendingTurn, delivery: TurnDelivery) -> None:
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
        record = TurnRecord(turn_id=pending.turn_id, started_unix_ms=int(time.time() * 1000), user_text=pending.text)
        result = ReplyResult()
        outcome = "failed"
        final: Outgoing | None = None  # completion or error: sent after the lock is released
        try:
            try:
                self.session = await store.get(tenant, session_id)
                history = await store.history(tenant, session_id)
                prompt, prompt_tokens = await self._prepare(pending, record, history)
            except SessionNotFound:
                final = self.error_item(delivery.turn_id, "NOT_FOUND", "the session no longer exists")
                return
            except PromptTooLong as too_long:
                final = self.error_item(delivery.turn_id, "INVALID_ARGUMENT", str(too_long))
                return
            except (MediaRejected, BackendError) as error:
                final = self.error_item(delivery.turn_id, error.code, error.message)
                return
            self.send(Outgoing(event=self.event(
                delivery.turn_id, turn_started=assistant_pb2.TurnStarted(input=delivery.input_kind, prompt_tokens=prompt_tokens)
            )))
            request = ReplyRequest(
                ids=CallIds(session_id, delivery.turn_id, pending.seed),
                prompt=prompt,
                max_new_tokens=pending.max_reply,
                temperature=self.session.config.temperature,
                speech_output=self.session.config.speech_output,
            )
            try:
                try:
                    await self._deps.pipeline.run(request, _StreamSink(self, delivery), result)
                except BackendError as error:
                    if error.code != "FAILED_PRECONDITION" or result.token_ids:
                        raise
                    # The LLM no longer holds past media in its cache (cold session, other replica):
                    # restore their rows and ask again. Nothing was delivered yet.
                    refs = {ref.content_id: ref for turn in history for ref in turn.media}
                    prompt = await self._deps.media.restore(request.ids, prompt, refs)
                    request = replace(request, prompt=prompt)
                    result = ReplyResult()
                    await self._deps.pipeline.run(request, _StreamSink(self, delivery), result)
                outcome = "suppressed" if result.suppressed else "completed"
            except asyncio.CancelledError:
                # Handled here on purpose: the turn still records what was delivered and reports it.
                asyncio.current_task().uncancel()
                outcome = self._cancel_reason
                flush_reason = "barge_in" if outcome == "barged_in" else "cancel"
                self.send(Outgoing(event=self.event(delivery.turn_id, playback_flush=assistant_pb2.PlaybackFlush(reason=flush_reason))))
            except (MediaRejected, BackendError) as error:
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
            tracing.turn_outcome(outcome)
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

"""One Converse stream: client events in, server events out, one turn at a time.

The conversation dispatches what the client sends (turns, audio, camera frames, cancels, playback
positions) and what the audio service hears (speech starts and ends, utterances); each turn runs in a
`TurnRunner` and is tracked by its `TurnHandle`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from services.orchestrator.backends import (
    CallIds,
    MediaPiece,
    VadParameters,
    VoiceDropped,
    VoiceFormat,
    VoiceSpeechStarted,
    VoiceSpeechStopped,
    VoiceUtterance,
)
from services.orchestrator.delivery import TurnDelivery
from services.orchestrator.ids import id_problem
from services.orchestrator.media import MediaRequest, content_id
from services.orchestrator.outbox import CLOSE, CODES, Outbox
from services.orchestrator.records import MediaRef, SessionRecord
from services.orchestrator.turn import CancelReason, TurnHandle
from services.orchestrator.turn_input import PendingTurn, TurnInputs, TurnRejected
from services.orchestrator.turn_runner import ConversationDeps, TurnRunner
from services.orchestrator.voice import MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, VoiceInput
from shared import log_fields, tracing
from vita.assistant.v1 import assistant_pb2

__all__ = ["CLOSE", "CODES", "Conversation", "ConversationDeps", "TurnRejected"]

log = logging.getLogger(__name__)

# The shortest utterance the audio encoder takes, in ms (a push-to-talk commit has no other minimum).
MIN_ENCODABLE_MS = 85


@dataclass
class PendingCommit:
    """An `audio_commit` sent on to the audio service, waiting for its answer: an utterance (its turn) or
    a drop (an error event under the commit's turn id)."""

    turn_id: str  # as the client sent it; empty = the server names the turn
    media: list[MediaRequest] = field(default_factory=list)
    after_turn_id: str = ""  # a turn VAD started since the previous commit
    answered: bool = False  # answered already (refused audio): what the audio service makes of it is dropped


class Conversation:
    def __init__(self, deps: ConversationDeps, tenant: str, session: SessionRecord):
        self._deps = deps
        self._tenant = tenant
        self.session = session
        self.outbox = Outbox(session.session_id)
        self.outbound = self.outbox.queue
        self._inputs = TurnInputs(deps.settings, deps.media.vision_enabled)
        self._turn: TurnHandle | None = None
        self._voice: VoiceInput | None = None
        self._voice_format: VoiceFormat | None = None
        self._speech_end_ns: int | None = None
        # Commits in the order sent. Every one is answered: the audio service answers each with an
        # utterance or a drop, in order. A VAD decision already on its way when a commit is sent can take
        # that commit's answer (the turn then carries the commit's id); the commit's own answer, finding
        # no commit waiting, is then dropped.
        self._commits: deque[PendingCommit] = deque()
        # A turn server VAD started from speech that no commit claimed: a commit that follows finds that
        # speech already taken, and its answer says where it went.
        self._unclaimed_turn_id = ""
        # The server is shutting down (services.orchestrator.draining): new turns are refused.
        self._stopping = False

    # ----- sending -----

    def event(self, turn_id: str = "", **kind) -> assistant_pb2.ServerEvent:
        return self.outbox.event(turn_id, **kind)

    def send_error(self, turn_id: str, code: str, message: str) -> None:
        self.outbox.send_error(turn_id, code, message)

    def close(self) -> None:
        self.outbox.close()

    # ----- client events -----

    @property
    def turn_running(self) -> bool:
        return self._turn is not None and self._turn.active

    def configure_input(self, start: assistant_pb2.ConverseStart) -> None:
        if start.input_sample_rate_hz or start.input_encoding:
            encoding = "f32" if start.input_encoding == assistant_pb2.AUDIO_ENCODING_F32 else "pcm16"
            self._voice_format = VoiceFormat(start.input_sample_rate_hz, encoding)

    def start_text_turn(self, message: assistant_pb2.UserTurn) -> None:
        if not self._valid_turn_id(message.turn_id):
            return
        turn_id = message.turn_id or uuid.uuid4().hex
        try:
            self._check_can_start()
            pending = self._inputs.text_turn(message, self.session.config, turn_id)
        except TurnRejected as rejected:
            self.send_error(turn_id, rejected.code, rejected.message)
            return
        self._launch(pending)

    def cancel_turn(self, turn_id: str) -> None:
        if not self._valid_turn_id(turn_id):
            return
        if not self.turn_running or (turn_id and turn_id != self._turn.turn_id):
            self.send_error(turn_id, "FAILED_PRECONDITION", "no such turn is running")
            return
        self._turn.cancel(CancelReason.CLIENT)

    def report_playback(self, position: assistant_pb2.PlaybackPosition) -> None:
        """A position for a turn that is no longer running (it arrived late) changes nothing."""
        if not self._valid_turn_id(position.turn_id):
            return
        turn = self._turn
        if turn is not None and turn.active and position.turn_id in ("", turn.turn_id):
            turn.report_playback(position.played_ms)

    def add_camera_frame(self, frame: assistant_pb2.CameraFrame) -> None:
        try:
            self._inputs.add_camera_frame(frame)
        except TurnRejected as rejected:
            self.send_error("", rejected.code, rejected.message)

    async def append_audio(self, pcm: bytes) -> None:
        voice = self._voice_input()
        if voice is not None:
            await voice.append(pcm)

    async def commit_audio(self, commit: assistant_pb2.AudioCommit) -> None:
        """Every commit is answered: by its turn, or by an error event under its turn id."""
        if not self._valid_turn_id(commit.turn_id):
            return
        voice = self._voice_input(commit.turn_id)
        if voice is None:
            return
        try:
            pending = PendingCommit(commit.turn_id, self._inputs.media_requests(commit.media, self.session.config))
        except TurnRejected as rejected:
            self.send_error(commit.turn_id, rejected.code, rejected.message)
            return
        refusal = voice.refuse_commit()
        if refusal is not None:
            self.send_error(commit.turn_id, refusal.code, refusal.message)
            if not refusal.forward:
                return
            pending.answered = True
        self._speech_end_ns = time.perf_counter_ns()
        pending.after_turn_id, self._unclaimed_turn_id = self._unclaimed_turn_id, ""
        # Waiting before it is sent: the answer may come back while the write is still in progress.
        self._commits.append(pending)
        await voice.commit()

    async def shutdown(self) -> None:
        """The stream ended (client left or the server stops): stop the turn, keep what was heard."""
        if self._voice is not None:
            await self._voice.close()
        turn = self._turn
        if turn is not None and turn.active:
            turn.cancel(CancelReason.DISCONNECT)
        while turn is not None:  # the turn, and one it was launched behind that is still recording
            try:
                await turn.wait()
            except asyncio.CancelledError:
                pass  # the turn is shielded: it still records what was heard
            turn = turn.previous

    async def wait_idle(self) -> None:
        if self._turn is not None:
            await self._turn.wait()

    def stop_new_turns(self) -> None:
        """The server is shutting down: the running turn goes on, new ones get UNAVAILABLE."""
        self._stopping = True

    # ----- voice -----

    def _valid_turn_id(self, turn_id: str) -> bool:
        """An empty id is fine (the server names the turn); a bad one is refused without quoting it."""
        problem = id_problem("turn_id", turn_id, required=False)
        if problem is not None:
            self.send_error("", "INVALID_ARGUMENT", problem)
        return problem is None

    def _voice_input(self, turn_id: str = "") -> VoiceInput | None:
        """The stream's voice input; None (with an error under `turn_id`) when audio cannot be taken."""
        if self._voice is not None:
            return self._voice
        if self._deps.audio is None:
            self.send_error(turn_id, "FAILED_PRECONDITION", "audio input is not served by this deployment")
            return None
        fmt = self._voice_format
        if fmt is None or not MIN_SAMPLE_RATE_HZ <= fmt.sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
            declared = "no sample rate" if fmt is None or not fmt.sample_rate_hz else f"{fmt.sample_rate_hz} Hz"
            self.send_error(
                turn_id, "INVALID_ARGUMENT",
                f"declare the audio's sample rate in `start` (input_sample_rate_hz between {MIN_SAMPLE_RATE_HZ} "
                f"and {MAX_SAMPLE_RATE_HZ}); got {declared}",
            )
            return None
        self._voice = VoiceInput(
            self._deps.audio,
            CallIds(self.session.session_id, f"voice-{uuid.uuid4().hex[:8]}"),
            fmt,
            VadParameters(**self.session.config.vad.model_dump()),
            self._on_voice_event,
            self._on_voice_error,
            self._commit_waiting,
        )
        return self._voice

    def _commit_waiting(self) -> bool:
        return any(not commit.answered for commit in self._commits)

    def _on_voice_error(self, error) -> None:
        """The audio stream failed: the commits waiting on it get the error as their answer; without
        any, it is a stream-level error."""
        if not self._commit_waiting():
            self.send_error("", error.code, error.message)
        while self._commits:
            commit = self._commits.popleft()
            if not commit.answered:
                self.send_error(commit.turn_id, error.code, error.message)

    async def _on_voice_event(self, event) -> None:
        if isinstance(event, VoiceSpeechStarted):
            self.outbox.send_event(speech_started=assistant_pb2.SpeechStarted(offset_ms=event.offset_ms))
            if self.turn_running:
                # Barge-in: the user talks over the reply. Stop it now (LLM, speech, queued audio) and
                # tell the client to drop what it has queued; the new utterance becomes the next turn.
                self._turn.cancel(CancelReason.BARGE_IN)
        elif isinstance(event, VoiceSpeechStopped):
            self._speech_end_ns = time.perf_counter_ns()
            self.outbox.send_event(speech_stopped=assistant_pb2.SpeechStopped(offset_ms=event.offset_ms))
        elif isinstance(event, VoiceUtterance):
            await self._start_audio_turn(event)
        elif isinstance(event, VoiceDropped):
            self._on_dropped(event)

    def _on_dropped(self, dropped: VoiceDropped) -> None:
        """An utterance that makes no turn. It answers the oldest waiting commit; without one it was a
        VAD decision, which only a too-long utterance reports (a short one was a click or a cough)."""
        vad = self.session.config.vad
        if dropped.reason == "too_long":
            code = "RESOURCE_EXHAUSTED"
            message = f"the utterance ran past the {vad.max_utterance_ms} ms limit (vad.max_utterance_ms) and was discarded"
        elif dropped.reason == "too_short":
            code = "INVALID_ARGUMENT"
            minimum = f"vad.min_utterance_ms, {vad.min_utterance_ms}" if vad.enabled else f"the encoder's minimum, {MIN_ENCODABLE_MS}"
            message = f"the utterance was {dropped.duration_ms} ms, under {minimum} ms, and was not used"
        elif dropped.reason == "empty":
            code = "FAILED_PRECONDITION"
            message = f"nothing to commit: no {'speech was detected' if vad.enabled else 'audio'} since the last commit"
        else:
            return  # cancelled: the stream is going away
        if self._commits:
            commit = self._commits.popleft()
            if commit.answered:
                return
            if dropped.reason == "empty" and commit.after_turn_id:
                message = (f"nothing to commit: the speech since the last commit had already ended (server VAD) "
                           f"and is turn {commit.after_turn_id}")
            self.send_error(commit.turn_id, code, message)
        elif dropped.reason == "too_long":
            self.send_error("", code, message)

    async def _start_audio_turn(self, utterance: VoiceUtterance) -> None:
        claimed = bool(self._commits)
        commit = self._commits.popleft() if claimed else PendingCommit("")
        if commit.answered:
            return  # its audio was refused: the utterance is discarded
        turn_id = commit.turn_id or uuid.uuid4().hex
        if not claimed:
            self._unclaimed_turn_id = turn_id
        if self._stopping:
            self.send_error(turn_id, "UNAVAILABLE", "the server is shutting down; reconnect to continue this session")
            return
        media = commit.media
        speech_end_ns = self._speech_end_ns or time.perf_counter_ns()
        self._speech_end_ns = None
        if self.turn_running:
            # A barged-in reply is still recording what was heard: the new turn follows it.
            await self.wait_idle()
        key = content_id("audio", utterance.pcm16k)
        blob_key = await self._deps.store.put_blob(self._tenant, key, utterance.pcm16k, session_id=self.session.session_id)
        piece = MediaPiece(key, utterance.clip.num_rows, utterance.clip.rows)
        self._deps.media.remember(piece)
        ref = MediaRef(kind="audio", content_id=key, num_rows=piece.num_rows, blob_key=blob_key, source="audio")
        config = self.session.config
        self._launch(PendingTurn(
            turn_id, "audio", speech_end_ns, media=media, audio=(piece, ref), seed=config.seed,
            max_reply=config.max_reply_tokens, speech_end_ns=speech_end_ns, media_timings=utterance.clip.timings,
        ))

    # ----- turns -----

    def _check_can_start(self) -> None:
        if self._stopping:
            raise TurnRejected("UNAVAILABLE", "the server is shutting down; reconnect to continue this session")
        if self._turn is not None and self._turn.busy:
            # FAILED_PRECONDITION, not ABORTED: retrying at once cannot succeed; the client must wait for
            # turn_completed, or send cancel (or barge in by voice) first.
            raise TurnRejected(
                "FAILED_PRECONDITION",
                f"turn {self._turn.turn_id} is still running on this session; wait for turn_completed or cancel it",
            )

    def _launch(self, pending: PendingTurn) -> None:
        camera = self._inputs.camera_request()
        if camera is not None:
            pending.media.append(camera)
        handle = TurnHandle(TurnDelivery(
            turn_id=pending.turn_id, input_kind=pending.metric_input, input_end_ns=pending.input_end_ns,
            speech_end_ns=pending.speech_end_ns,
        ), previous=self._turn)
        runner = TurnRunner(self._deps, self._tenant, self.session, self.outbox, handle, pending, self._set_session)
        self._turn = handle
        # One trace per turn (shared.tracing; no-op spans when tracing is off); its log lines carry the
        # session and turn (shared.log_fields).
        handle.start(log_fields.bound(
            tracing.turn_span(
                runner.run(), session_id=self.session.session_id, turn_id=pending.turn_id,
                input_kind=pending.input_kind,
            ),
            session_id=self.session.session_id, turn_id=pending.turn_id,
        ))

    def _set_session(self, session: SessionRecord) -> None:
        self.session = session

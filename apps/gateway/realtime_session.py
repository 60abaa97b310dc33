"""One Realtime WebSocket bridged onto one vita session: client events become SDK calls on a conversation,
and the conversation's events become Realtime server events.

How the two models meet:
- A response is a turn. `response.create` sends what the client added since the last response: the text
  items (joined) with their images as a typed turn, or the committed input audio as a spoken turn.
- Server VAD (`turn_detection: server_vad`, the default) is the orchestrator's VAD: input audio streams
  straight through, and the orchestrator starts a turn when the utterance ends; that turn's `TurnStarted`
  becomes `input_audio_buffer.committed`, the user item and `response.created`. Speaking over a reply
  (barge-in) ends that response with status "cancelled" (reason "turn_detected").
- Manual turns (`turn_detection: null`): input audio is held here until `input_audio_buffer.commit`, so
  `input_audio_buffer.clear` can drop it, and goes to the orchestrator with the commit at `response.create`.
- Session settings the orchestrator holds per session (speech output, VAD, temperature) are applied by
  starting a fresh vita session while the connection has had no turn yet; after that they are refused.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc

import sdk
from apps.gateway import realtime_protocol as rp
from apps.gateway.audio import b64decode, b64encode, to_openai_rate, OPENAI_RATE_HZ, PCM16_BYTES
from apps.gateway.errors import GatewayError, from_grpc
from apps.gateway.media import image_bytes
from apps.gateway.metrics import GatewayMetrics
from apps.gateway.realtime_config import RealtimeConfig, apply_update, max_tokens
from apps.gateway.settings import GatewaySettings
from vita.assistant.v1 import assistant_pb2 as pb

log = logging.getLogger(__name__)

# Held manual-mode audio goes to the orchestrator in pieces of this size at a commit.
COMMIT_PIECE_BYTES = OPENAI_RATE_HZ * PCM16_BYTES // 2  # 0.5 s
# Largest image in an item, in bytes (the orchestrator's own per-item limit is larger).
MAX_IMAGE_BYTES = 16 * 1024 * 1024

Send = Callable[[dict], Awaitable[None]]


@dataclass
class _Response:
    turn_id: str
    response_id: str
    item_id: str  # the assistant item
    audio: bool
    requested_at: float  # perf_counter: response.create, or the start of a spoken turn
    text: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    first_audio: bool = False


class RealtimeSession:
    def __init__(self, client: sdk.AsyncClient, send: Send, dialect: rp.Dialect, dialect_decided: bool,
                 settings: GatewaySettings, metrics: GatewayMetrics, resume_session_id: str | None = None):
        self.client = client
        self.dialect = dialect
        self.config = RealtimeConfig()
        self.session_id = ""
        # Set when the vita conversation is over for good; the endpoint then closes the WebSocket.
        self.ended = asyncio.Event()
        self.end_reason = ""
        self._send = send
        self._dialect_decided = dialect_decided
        self._settings = settings
        self._metrics = metrics
        self._resume = resume_session_id
        self._owns_session = resume_session_id is None
        self._conv: sdk.Conversation | None = None
        self._pump: asyncio.Task | None = None
        self._turns = 0  # turns started on this session (session settings are fixed after the first)
        self._responses: dict[str, _Response] = {}
        self._active: _Response | None = None
        self._pending_text: list[str] = []
        self._pending_images: list[bytes] = []
        self._held_audio: list[bytes] = []  # manual mode: appended since the last commit or clear
        self._held_bytes = 0
        self._committed: tuple[str, list[bytes]] | None = None  # manual mode: (item id, audio)
        self._speech_item: str | None = None  # VAD: the item id of the utterance in progress
        self._commit_items: dict[str, str] = {}  # VAD-mode manual commits: turn id -> user item id
        self._assistant_items: dict[str, str] = {}  # assistant item id -> turn id (for truncate)
        self._last_item: str | None = None

    # ----- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> None:
        """Creates (or resumes) the vita session and opens its conversation; refusals raise AioRpcError."""
        if self._resume:
            session = await self.client.get_session(self._resume)
            self.config = _config_of(session.config)
            self.session_id = session.session_id
        else:
            session = await self.client.create_session(self.config.session_config())
            self.session_id = session.session_id
        try:
            await self._open_conversation()
        except BaseException:
            await self._delete_session()
            raise

    async def start(self) -> None:
        """Once the WebSocket is accepted: the first server event."""
        await self._emit("session.created", session=self._session_object())

    async def close(self) -> None:
        await self._close_conversation()
        await self._delete_session()

    async def _open_conversation(self) -> None:
        conv = self.client.conversation(self.session_id, audio=sdk.AudioFormat(OPENAI_RATE_HZ, "pcm16"))
        await conv.open()
        self._conv = conv
        self._pump = asyncio.create_task(self._pump_events(conv), name="gateway-realtime-pump")

    async def _close_conversation(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
        if self._conv is not None:
            await self._conv.close()
            self._conv = None

    async def _delete_session(self) -> None:
        if not self._owns_session or not self.session_id:
            return
        try:
            await self.client.delete_session(self.session_id)
        except grpc.aio.AioRpcError as error:  # gone already, or the orchestrator is down: it expires
            log.info("session %s not deleted: %s", self.session_id, error.code().name)

    # ----- client events ----------------------------------------------------------------------------

    async def handle(self, event: rp._Event) -> None:
        """One client event; a refusal raises GatewayError (sent as an error event, the connection stays)."""
        handler = getattr(self, "_on_" + event.type.replace(".", "_"))
        await handler(event)

    async def _on_session_update(self, event: rp.SessionUpdate) -> None:
        if not self._dialect_decided:
            self._dialect_decided = True
            if rp.looks_beta(event.session):
                self.dialect = rp.BETA
        new = apply_update(self.config, event.session)
        started = self._turns or not self._owns_session
        if new.fixed_settings() != self.config.fixed_settings() and started:
            raise GatewayError(
                "output modalities, turn detection and temperature can only change before the first response "
                "of a connection", code="session_update_after_start", param="session", event_id=event.event_id)
        if new.session_config() != self.config.session_config() and not started:
            await self._restart_session(new)
        # Started, and only the reply length changed: typed turns carry it from now on.
        self.config = new
        await self._emit("session.updated", session=self._session_object())

    async def _restart_session(self, config: RealtimeConfig) -> None:
        await self._close_conversation()
        await self._delete_session()
        session = await self.client.create_session(config.session_config())
        self.session_id = session.session_id
        await self._open_conversation()

    async def _on_input_audio_buffer_append(self, event: rp.AudioAppend) -> None:
        pcm = b64decode(event.audio, "audio")
        if not pcm:
            return
        if self.config.vad:
            await self._conv.append_audio(pcm)  # False while the stream is down: that audio is lost
            return
        limit = int(self._settings.max_buffered_audio_s * OPENAI_RATE_HZ * PCM16_BYTES)
        if self._held_bytes + len(pcm) > limit:
            raise GatewayError(f"the input audio buffer holds at most {self._settings.max_buffered_audio_s:.0f} s; "
                               "commit or clear it", code="input_audio_buffer_full", event_id=event.event_id)
        self._held_audio.append(pcm)
        self._held_bytes += len(pcm)

    async def _on_input_audio_buffer_commit(self, event: rp.AudioCommit) -> None:
        item_id = rp.new_id("item")
        if self.config.vad:
            # The orchestrator holds the audio; the turn it starts is announced by its TurnStarted.
            turn_id = uuid.uuid4().hex
            self._commit_items[turn_id] = item_id
            await self._conv.send_event(pb.ClientEvent(audio_commit=pb.AudioCommit(turn_id=turn_id)))
        else:
            if not self._held_bytes:
                raise GatewayError("the input audio buffer is empty", code="input_audio_buffer_commit_empty",
                                   event_id=event.event_id)
            self._committed = (item_id, self._held_audio)
            self._held_audio, self._held_bytes = [], 0
        await self._announce_commit(item_id)

    async def _on_input_audio_buffer_clear(self, event: rp.AudioClear) -> None:
        self._held_audio, self._held_bytes = [], 0
        await self._emit("input_audio_buffer.cleared")

    async def _on_conversation_item_create(self, event: rp.ItemCreate) -> None:
        item = event.item
        if item.type != "message" or item.role != "user":
            raise GatewayError("only user messages can be added (no system, assistant or function call items)",
                               code="unsupported_item", param="item.role", event_id=event.event_id)
        if not item.content:
            raise GatewayError("item.content is empty", code="invalid_value", param="item.content",
                               event_id=event.event_id)
        texts, images, echo = [], [], []
        for index, part in enumerate(item.content):
            param = f"item.content[{index}]"
            if part.type in ("input_text", "text"):
                if part.text is None:
                    raise GatewayError(f"{param}.text is missing", code="invalid_value", param=param,
                                       event_id=event.event_id)
                texts.append(part.text)
                echo.append({"type": "input_text", "text": part.text})
            elif part.type == "input_image":
                images.append(await image_bytes(part.image_url, f"{param}.image_url", self._settings, MAX_IMAGE_BYTES))
                echo.append({"type": "input_image"})
            else:
                raise GatewayError(f"{param}: content type {part.type[:40]!r} is not supported in items "
                                   "(input_text and input_image are; send audio with input_audio_buffer.append)",
                                   code="unsupported_content", param=param, event_id=event.event_id)
        if texts:
            self._pending_text.append("\n".join(texts))
            self._add_images(images)
        elif self.config.vad:
            # Pictures alone while the user talks are what the camera sees: the orchestrator keeps the last
            # seconds of frames as the next turn's video.
            for image in images:
                await self._conv.send_camera_frame(_as_jpeg(image, event.event_id))
        else:
            self._add_images(images)
        await self._item_added(rp.user_item(item.id or rp.new_id("item"), echo))

    async def _on_response_create(self, event: rp.ResponseCreate) -> None:
        if self._active is not None:
            raise GatewayError("the conversation already has an active response",
                               code="conversation_already_has_active_response", event_id=event.event_id)
        params = event.response or {}
        if params.get("conversation") == "none" or params.get("input") or params.get("tools"):
            raise GatewayError("out-of-band responses (conversation none, input, tools) are not supported",
                               code="unsupported_value", param="response", event_id=event.event_id)
        modalities = params.get("output_modalities", params.get("modalities"))
        if modalities is not None and isinstance(modalities, list) and ("audio" in modalities) != self.config.speech_output:
            raise GatewayError("a response's output modalities must be the session's (set them with session.update)",
                               code="unsupported_value", param="response.output_modalities", event_id=event.event_id)
        limit = params.get("max_output_tokens", params.get("max_response_output_tokens"))
        reply_tokens = max_tokens(limit, "response.max_output_tokens") if limit is not None else self.config.max_output_tokens
        turn_id = uuid.uuid4().hex
        audio_pieces: list[bytes] = []
        if self._committed is not None:
            _, audio = self._committed
            self._committed = None
            media = self._take_images()
            audio_pieces = list(_pieces(audio, COMMIT_PIECE_BYTES))
            message = pb.ClientEvent(audio_commit=pb.AudioCommit(turn_id=turn_id, media=media))
        elif self._pending_text or self._pending_images:
            text = "\n".join(self._pending_text)
            self._pending_text = []
            turn = pb.UserTurn(turn_id=turn_id, text=text, media=self._take_images())
            if reply_tokens is not None:
                turn.max_reply_tokens = reply_tokens
            message = pb.ClientEvent(turn=turn)
        else:
            raise GatewayError("nothing to respond to: add a user item (conversation.item.create) or commit input "
                               "audio first", code="no_pending_input", event_id=event.event_id)
        response = self._track(turn_id, time.perf_counter())
        self._turns += 1
        await self._begin(response)  # announced before the turn goes out, so no delta can overtake it
        for chunk in audio_pieces:
            await self._conv.append_audio(chunk)
        await self._conv.send_event(message)

    async def _on_response_cancel(self, event: rp.ResponseCancel) -> None:
        active = self._active
        if active is None or (event.response_id and event.response_id != active.response_id):
            raise GatewayError("there is no active response to cancel", code="response_cancel_not_active",
                               event_id=event.event_id)
        await self._conv.send_event(pb.ClientEvent(cancel=pb.CancelTurn(turn_id=active.turn_id)))

    async def _on_conversation_item_truncate(self, event: rp.ItemTruncate) -> None:
        turn_id = self._assistant_items.get(event.item_id)
        if turn_id is None:
            raise GatewayError("no assistant item with that id", code="item_not_found", param="item_id",
                               event_id=event.event_id)
        # What the user heard: history keeps the reply text up to there.
        await self._conv.report_playback(turn_id, event.audio_end_ms)
        await self._emit("conversation.item.truncated", item_id=event.item_id, content_index=event.content_index,
                         audio_end_ms=event.audio_end_ms)

    # ----- server events ----------------------------------------------------------------------------

    async def _pump_events(self, conv: sdk.Conversation) -> None:
        async for event in conv.events():
            try:
                await self._on_event(event)
            except (ConnectionError, RuntimeError) as error:  # the WebSocket closed under us
                log.debug("realtime send failed: %s", error)
                self.end_reason = "the client went away"
                self.ended.set()
                return

    async def _on_event(self, event: sdk.Event) -> None:
        response = self._responses.get(event.turn_id) if event.turn_id else None
        if isinstance(event, sdk.SpeechStarted):
            self._speech_item = rp.new_id("item")
            await self._emit("input_audio_buffer.speech_started", audio_start_ms=event.offset_ms,
                             item_id=self._speech_item)
        elif isinstance(event, sdk.SpeechStopped):
            self._speech_item = self._speech_item or rp.new_id("item")
            await self._emit("input_audio_buffer.speech_stopped", audio_end_ms=event.offset_ms,
                             item_id=self._speech_item)
        elif isinstance(event, sdk.TurnStarted):
            if response is None:  # a spoken turn the orchestrator started (server VAD, or a VAD-mode commit)
                response = await self._spoken_turn_started(event.turn_id)
            response.prompt_tokens = event.prompt_tokens
        elif response is None:
            if isinstance(event, sdk.TurnError):
                await self.emit_error(from_grpc(event.code, event.message))
            elif isinstance(event, sdk.StreamEnded) and event.code is not None:
                self.end_reason = f"{event.code.name}: {event.details}"
                await self.emit_error(from_grpc(event.code, f"the conversation ended: {event.details}"))
                self.ended.set()
        elif isinstance(event, sdk.TextDelta):
            response.text.append(event.text)
            kind = self.dialect.transcript_delta if response.audio else self.dialect.text_delta
            await self._emit(kind, **self._where(response), delta=event.text)
        elif isinstance(event, sdk.AudioChunk):
            if not response.first_audio:
                response.first_audio = True
                self._metrics.first_audio.labels("realtime").observe(time.perf_counter() - response.requested_at)
            pcm = to_openai_rate(event.pcm, event.sample_rate_hz)
            await self._emit(self.dialect.audio_delta, **self._where(response), delta=b64encode(pcm))
        elif isinstance(event, sdk.TurnCompleted):
            await self._finish(response, event)
        elif isinstance(event, sdk.TurnError):
            await self.emit_error(from_grpc(event.code, event.message))
            await self._finish(response, None, failure=from_grpc(event.code, event.message))
        elif isinstance(event, sdk.TurnInterrupted):
            await self._finish(response, None, failure=GatewayError(
                f"the connection to the orchestrator dropped: {event.reason}", status=503, type="server_error",
                code="interrupted"))

    async def _spoken_turn_started(self, turn_id: str) -> _Response:
        item_id = self._commit_items.pop(turn_id, None)
        if item_id is None:
            item_id = self._speech_item or rp.new_id("item")
            await self._announce_commit(item_id)
        self._speech_item = None
        self._turns += 1
        response = self._track(turn_id, time.perf_counter())
        await self._begin(response)
        return response

    def _track(self, turn_id: str, requested_at: float) -> _Response:
        response = _Response(turn_id, "resp_" + turn_id[:24], "item_" + turn_id[:24], self.config.speech_output,
                             requested_at)
        self._responses[turn_id] = response
        self._assistant_items[response.item_id] = turn_id
        self._active = response
        return response

    async def _begin(self, response: _Response) -> None:
        await self._emit("response.created", response=self._response_object(response, "in_progress", []))
        item = rp.assistant_item(response.item_id, self.dialect, response.audio, "", "in_progress")
        item["content"] = []
        await self._emit("response.output_item.added", response_id=response.response_id, output_index=0, item=item)
        await self._item_added(item, announce_done=False)
        part = {"type": self.dialect.audio_part, "transcript": ""} if response.audio else {"type": self.dialect.text_part, "text": ""}
        await self._emit("response.content_part.added", **self._where(response), part=part)

    async def _finish(self, response: _Response, done: sdk.TurnCompleted | None,
                      failure: GatewayError | None = None) -> None:
        self._responses.pop(response.turn_id, None)
        if self._active is response:
            self._active = None
        text = "".join(response.text)
        where = self._where(response)
        if response.audio:
            await self._emit(self.dialect.audio_done, **where)
            await self._emit(self.dialect.transcript_done, **where, transcript=text)
            part = {"type": self.dialect.audio_part, "transcript": text}
        else:
            await self._emit(self.dialect.text_done, **where, text=text)
            part = {"type": self.dialect.text_part, "text": text}
        await self._emit("response.content_part.done", **where, part=part)
        status, details = _status(done, failure)
        item_status = "completed" if status == "completed" else "incomplete"
        item = rp.assistant_item(response.item_id, self.dialect, response.audio, text, item_status)
        await self._emit("response.output_item.done", response_id=response.response_id, output_index=0, item=item)
        if not self.dialect.is_beta:
            await self._emit("conversation.item.done", item=item)
        usage = _usage(response, done)
        await self._emit("response.done", response=self._response_object(response, status, [item], details, usage))

    # ----- helpers ----------------------------------------------------------------------------------

    async def _announce_commit(self, item_id: str) -> None:
        await self._emit("input_audio_buffer.committed", previous_item_id=self._last_item, item_id=item_id)
        await self._item_added(rp.user_item(item_id, [{"type": "input_audio", "transcript": None}]))

    async def _item_added(self, item: dict, announce_done: bool = True) -> None:
        """A new conversation item: `conversation.item.created` in beta; `conversation.item.added` (and, for
        a finished item, `conversation.item.done`) in GA."""
        previous, self._last_item = self._last_item, item["id"]
        if self.dialect.is_beta:
            await self._emit("conversation.item.created", previous_item_id=previous, item=item)
            return
        await self._emit("conversation.item.added", previous_item_id=previous, item=item)
        if announce_done:
            await self._emit("conversation.item.done", previous_item_id=previous, item=item)

    def _add_images(self, images: list[bytes]) -> None:
        self._pending_images = (self._pending_images + images)[-self._settings.max_pending_images:]

    def _take_images(self) -> list[pb.MediaInput]:
        images, self._pending_images = self._pending_images, []
        return [pb.MediaInput(image=image) for image in images]

    def _where(self, response: _Response) -> dict:
        return {"response_id": response.response_id, "item_id": response.item_id, "output_index": 0,
                "content_index": 0}

    def _session_object(self) -> dict:
        return self.config.session_object(self.session_id, self._settings.model_name, self.dialect)

    def _response_object(self, response: _Response, status: str, output: list, details: dict | None = None,
                         usage: dict | None = None) -> dict:
        return rp.response_object(response.response_id, self.dialect, response.audio, status, output, details, usage)

    async def _emit(self, kind: str, **fields) -> None:
        await self._send(rp.server_event(kind, **fields))

    async def emit_error(self, error: GatewayError) -> None:
        self._metrics.realtime_errors.labels(error.code or error.type).inc()
        await self._send(rp.error_event(error))


def _status(done: sdk.TurnCompleted | None, failure: GatewayError | None) -> tuple[str, dict | None]:
    if failure is not None or done is None:
        error = (failure or GatewayError("the response failed", type="server_error")).body()["error"]
        return "failed", {"type": "failed", "error": {"type": error["type"], "code": error["code"],
                                                      "message": error["message"]}}
    if done.outcome == "completed":
        return "completed", None
    if done.outcome == "cancelled":
        return "cancelled", {"type": "cancelled", "reason": "client_cancelled"}
    if done.outcome == "barged_in":
        return "cancelled", {"type": "cancelled", "reason": "turn_detected"}
    if done.outcome == "suppressed":  # the model judged the speech not addressed to it
        return "cancelled", {"type": "cancelled", "reason": "not_addressed"}
    return "failed", {"type": "failed", "error": {"type": "server_error", "code": done.outcome or "failed",
                                                  "message": "the response failed"}}


def _usage(response: _Response, done: sdk.TurnCompleted | None) -> dict:
    text_out = done.reply_tokens if done else 0
    audio_out = done.codec_tokens if done else 0
    cached = done.cached_prompt_tokens if done else 0
    return {"total_tokens": response.prompt_tokens + text_out + audio_out, "input_tokens": response.prompt_tokens,
            "output_tokens": text_out + audio_out,
            "input_token_details": {"cached_tokens": cached, "text_tokens": response.prompt_tokens, "audio_tokens": 0},
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}}


def _config_of(stored: sdk.SessionConfig) -> RealtimeConfig:
    vad = stored.vad
    return RealtimeConfig(speech_output=stored.speech_output is not False,
                          vad=vad is None or vad.enabled is not False, temperature=stored.temperature)


def _pieces(chunks: list[bytes], size: int):
    data = b"".join(chunks)
    for offset in range(0, len(data), size):
        yield data[offset: offset + size]


def _as_jpeg(image: bytes, event_id: str | None) -> bytes:
    """Camera frames travel as JPEG; other image formats are converted."""
    if image[:3] == b"\xff\xd8\xff":
        return image
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as picture:
            out = io.BytesIO()
            picture.convert("RGB").save(out, format="JPEG", quality=85)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError):
        raise GatewayError("the image is not a decodable picture", code="invalid_image",
                           param="item.content", event_id=event_id) from None

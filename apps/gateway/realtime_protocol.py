"""The OpenAI Realtime event protocol as the gateway speaks it: the two dialects (beta and GA), the client
events it reads (pydantic models: unknown fields are ignored, wrong types are refused), and builders for
the server events it writes.

Beta and GA differ in a few server event names (`response.audio.delta` vs `response.output_audio.delta`,
...), in content part types (`audio` vs `output_audio`), and in the session object's shape. Client event
names are the same in both. Which dialect a connection speaks is decided at the handshake (see
`detect_dialect`), and a client that sent no hint but whose first `session.update` has the beta shape is
answered in beta from then on."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from apps.gateway.errors import GatewayError, clip


@dataclass(frozen=True)
class Dialect:
    name: str  # "beta" or "ga"
    text_delta: str
    text_done: str
    audio_delta: str
    audio_done: str
    transcript_delta: str
    transcript_done: str
    text_part: str  # an assistant content part holding text
    audio_part: str  # an assistant content part holding audio (and its transcript)

    @property
    def is_beta(self) -> bool:
        return self.name == "beta"


BETA = Dialect("beta", "response.text.delta", "response.text.done", "response.audio.delta",
               "response.audio.done", "response.audio_transcript.delta", "response.audio_transcript.done",
               "text", "audio")
GA = Dialect("ga", "response.output_text.delta", "response.output_text.done", "response.output_audio.delta",
             "response.output_audio.done", "response.output_audio_transcript.delta",
             "response.output_audio_transcript.done", "output_text", "output_audio")

# Fields only a beta session object has at its top level (GA nests them under `audio`).
BETA_SESSION_FIELDS = ("modalities", "input_audio_format", "output_audio_format", "turn_detection", "voice",
                       "input_audio_transcription", "max_response_output_tokens")


def detect_dialect(beta_header: str | None, subprotocols: list[str]) -> tuple[Dialect, bool]:
    """(dialect, decided): the `OpenAI-Beta: realtime=v1` header or the browser subprotocol
    `openai-beta.realtime-v1` mean beta, for good; without either the connection starts in GA and may
    still turn out beta by its first session.update."""
    if (beta_header and "realtime=v1" in beta_header.replace(" ", "")) or "openai-beta.realtime-v1" in subprotocols:
        return BETA, True
    return GA, False


def looks_beta(session: dict) -> bool:
    return "type" not in session and any(name in session for name in BETA_SESSION_FIELDS)


# ----- client events ------------------------------------------------------------------------------


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    event_id: str | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: dict[str, Any]


class AudioAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class AudioCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class AudioClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None
    image_url: str | None = None
    audio: str | None = None


class Item(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    type: str = "message"
    role: str | None = None
    content: list[ContentPart] = []


class ItemCreate(_Event):
    type: Literal["conversation.item.create"]
    item: Item
    previous_item_id: str | None = None


class ItemTruncate(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = 0
    audio_end_ms: int = Field(ge=0)


class ResponseCreate(_Event):
    type: Literal["response.create"]
    response: dict[str, Any] | None = None


class ResponseCancel(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


CLIENT_EVENTS: dict[str, type[_Event]] = {
    "session.update": SessionUpdate,
    "input_audio_buffer.append": AudioAppend,
    "input_audio_buffer.commit": AudioCommit,
    "input_audio_buffer.clear": AudioClear,
    "conversation.item.create": ItemCreate,
    "response.create": ResponseCreate,
    "response.cancel": ResponseCancel,
    "conversation.item.truncate": ItemTruncate,
}
# OpenAI client events the gateway knows but does not serve: refused with a clear error, not "unknown".
UNSUPPORTED_EVENTS = ("conversation.item.delete", "conversation.item.retrieve",
                      "output_audio_buffer.clear", "transcription_session.update", "session.close")


def parse_client_event(text: str) -> _Event:
    """One WebSocket text message → a client event, or GatewayError (the connection stays open)."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise GatewayError("the message is not valid JSON", code="invalid_json") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise GatewayError("an event must be a JSON object with a string 'type'", code="invalid_event",
                           param="type")
    kind = raw["type"]
    model = CLIENT_EVENTS.get(kind)
    if model is None:
        if kind in UNSUPPORTED_EVENTS:
            raise GatewayError(f"{kind} is not supported by this server", code="unsupported_event",
                               param="type", event_id=raw.get("event_id"))
        raise GatewayError(f"unknown event type {clip(kind, 80)!r}", code="invalid_event_type", param="type",
                           event_id=raw.get("event_id"))
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise GatewayError(f"{kind}: {where}: {first['msg']}", code="invalid_event", param=where,
                           event_id=raw.get("event_id")) from None


# ----- server events ------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def server_event(kind: str, **fields) -> dict:
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(error: GatewayError) -> dict:
    body = error.body()["error"]
    body["event_id"] = getattr(error, "event_id", None)
    return server_event("error", error=body)


def user_item(item_id: str, content: list[dict]) -> dict:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
            "status": "completed", "content": content}


def assistant_item(item_id: str, dialect: Dialect, audio: bool, text: str, status: str) -> dict:
    part = ({"type": dialect.audio_part, "transcript": text} if audio else {"type": dialect.text_part, "text": text})
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
            "status": status, "content": [part]}


def response_object(response_id: str, dialect: Dialect, audio: bool, status: str, output: list[dict],
                    status_details: dict | None = None, usage: dict | None = None) -> dict:
    modalities = ["audio"] if audio else ["text"]
    body = {"id": response_id, "object": "realtime.response", "status": status, "status_details": status_details,
            "output": output, "usage": usage, "conversation_id": None}
    if dialect.is_beta:
        body["modalities"] = ["text", "audio"] if audio else ["text"]
    else:
        body["output_modalities"] = modalities
    return body


def unix_now() -> int:
    return int(time.time())

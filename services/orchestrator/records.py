"""What the orchestrator keeps in Redis, as typed records (JSON on the wire, never pickle)."""

from __future__ import annotations

import enum

from pydantic import BaseModel, Field, ValidationError, field_validator

from shared.session_settings import SessionSettings, VadSettings

__all__ = ["MediaRef", "SessionRecord", "SessionSettings", "TurnOutcome", "TurnRecord", "VadSettings"]


class SessionRecord(BaseModel):
    session_id: str
    tenant: str
    created_unix_ms: int
    config: SessionSettings

    @field_validator("config", mode="wrap")
    @classmethod
    def _stored_vad_may_predate_validation(cls, value, handler):
        # Sessions created while CreateSession checked VAD values more loosely than the audio service
        # may hold values refused now (they never worked: the audio service refused or replaced them).
        # They take the defaults rather than make the session unreadable.
        try:
            return handler(value)
        except ValidationError:
            if not isinstance(value, dict) or not isinstance(value.get("vad"), dict):
                raise
            return handler({**value, "vad": {"enabled": value["vad"].get("enabled", True)}})


class MediaRef(BaseModel):
    """A media item of a past turn: enough to splice its cached embeddings, or to re-encode it."""

    kind: str  # "image" | "video" | "audio"
    content_id: str  # sha256 of the encoded bytes (+ encoding parameters)
    num_rows: int  # LLM positions it occupies
    blob_key: str = ""  # Redis key of the stored bytes (re-encoding after a cache miss)
    max_tiles: int = 1
    source: str = ""  # how to re-encode: "image" | "video" | "frames" (camera) | "audio"


class TurnOutcome(str, enum.Enum):
    """How a turn ended. Stored as these words, as records always were (the API sends an enum)."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"  # the client cancelled, or left
    BARGED_IN = "barged_in"
    SUPPRESSED = "suppressed"  # not addressed to the model (☟): text only
    FAILED = "failed"


class TurnRecord(BaseModel):
    turn_id: str
    started_unix_ms: int
    user_text: str = ""
    media: list[MediaRef] = Field(default_factory=list)
    # The reply as the user received it (all of it, or what was played of a cancelled one), and the
    # model's token ids of that text (state symbol first) so that the next prompt reproduces the LLM's
    # cached prefix exactly instead of re-tokenising text.
    reply_text: str = ""
    reply_token_ids: list[int] = Field(default_factory=list)
    outcome: TurnOutcome = TurnOutcome.COMPLETED

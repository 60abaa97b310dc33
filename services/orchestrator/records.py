"""What the orchestrator keeps in Redis, as typed records (JSON on the wire, never pickle)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class VadSettings(BaseModel):
    enabled: bool = True
    start_threshold: float = 0.7
    end_threshold: float = 0.55
    min_silence_ms: int = 500
    pre_roll_ms: int = 256
    min_utterance_ms: int = 1000
    max_utterance_ms: int = 30_000


class SessionSettings(BaseModel):
    """A session's configuration with every default filled in."""

    max_reply_tokens: int = 256
    speech_output: bool = True
    temperature: float = 0.0
    seed: int | None = None
    max_image_tiles: int = 1
    vad: VadSettings = Field(default_factory=VadSettings)
    max_history_turns: int = 8


class SessionRecord(BaseModel):
    session_id: str
    tenant: str
    created_unix_ms: int
    config: SessionSettings


class MediaRef(BaseModel):
    """A media item of a past turn: enough to splice its cached embeddings, or to re-encode it."""

    kind: str  # "image" | "video" | "audio"
    content_id: str  # sha256 of the encoded bytes (+ encoding parameters)
    num_rows: int  # LLM positions it occupies
    blob_key: str = ""  # Redis key of the stored bytes (re-encoding after a cache miss)
    max_tiles: int = 1
    source: str = ""  # how to re-encode: "image" | "video" | "frames" (camera) | "audio"


class TurnRecord(BaseModel):
    turn_id: str
    started_unix_ms: int
    user_text: str = ""
    media: list[MediaRef] = Field(default_factory=list)
    # Reply as delivered to the client: its text, and the model's token ids (state symbol first) so that
    # the next prompt reproduces the LLM's cached prefix exactly instead of re-tokenising text.
    reply_text: str = ""
    reply_token_ids: list[int] = Field(default_factory=list)
    outcome: str = "completed"  # completed | cancelled | barged_in | suppressed | failed

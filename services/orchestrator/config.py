"""Orchestrator settings (VITA_ORCH_*)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OrchestratorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITA_ORCH_", extra="ignore")

    # Model services: "host:port", a comma-separated list of replicas, or a gRPC target such as
    # "dns:///vita-speech:50051" (client-side round_robin spreads calls over what it resolves to).
    llm_address: str = "127.0.0.1:50061"
    speech_address: str = "127.0.0.1:50062"
    # Empty = that input modality is not served.
    audio_address: str = ""
    vision_address: str = ""
    # redis://host:port/db or unix:///path/to/redis.sock
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=AliasChoices("VITA_ORCH_REDIS_URL", "REDIS_URL")
    )
    # "key1=tenant1,key2=tenant2". Empty = no authentication (local default; logged at start).
    api_keys: str = ""
    # Idle sessions expire from Redis after this many seconds.
    session_ttl_s: int = 24 * 3600
    # A running turn's lock expires this long after its last refresh (orchestrator crash).
    turn_lock_ttl_s: float = 30.0
    # Longest user text accepted, in characters, before tokenising (the token limit is checked after).
    max_text_chars: int = 100_000
    # Upper bound a session may ask for, in tokens.
    max_reply_tokens_limit: int = 4096
    # Speech segmentation (docs/MODEL.md#segmenting): the first segment ends at the first punctuation mark, or at
    # first_segment_max_chars so that first audio never waits for a long clause; later segments end at
    # punctuation once they hold segment_min_chars, or at segment_max_chars.
    first_segment_max_chars: int = 40
    segment_min_chars: int = 5
    segment_max_chars: int = 160
    # Seconds a model call may take to connect before the turn fails with UNAVAILABLE.
    connect_timeout_s: float = 3.0
    # Maximum media per turn (images + videos), and encoded bytes per media item.
    max_media_per_turn: int = 4
    max_media_bytes: int = 32 * 1024 * 1024
    # Live camera: frames of the last seconds before a turn become its video; at most this many are kept.
    camera_window_s: float = 4.0
    max_camera_frames: int = 64
    # Media embeddings kept in memory to restore a cold LLM cache without re-encoding.
    embedding_cache_bytes: int = 256 * 1024 * 1024

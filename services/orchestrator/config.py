"""Orchestrator settings (VITA_ORCH_*)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.orchestrator.replicas import dns_name


class OrchestratorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITA_ORCH_", extra="ignore")

    # Model services: "host:port", a comma-separated list of replicas, or "dns:///name:port" (a headless
    # Service: every address the name resolves to is a replica, re-resolved every dns_refresh_s). How a
    # call picks its replica: services/orchestrator/replicas.py.
    llm_address: str = "127.0.0.1:50061"
    speech_address: str = "127.0.0.1:50062"
    # Empty = that input modality is not served.
    audio_address: str = ""
    vision_address: str = ""
    # redis://host:port/db, unix:///path/to/redis.sock, rediss://… (TLS), or Redis Sentinel:
    # redis+sentinel://host:port,host:port/master-name (services/orchestrator/redis_connect.py).
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=AliasChoices("VITA_ORCH_REDIS_URL", "REDIS_URL")
    )
    # rediss:// and rediss+sentinel://: the CA that signed the server's certificate (PEM; empty = the
    # system's), and a client certificate and key when the server asks for one.
    redis_ca: str = ""
    redis_cert: str = ""
    redis_key: str = ""
    # Replicas that must hold a session's new turn (Redis WAIT) before the turn is reported complete, so that
    # a failover to a replica loses no completed turn. 0 = don't wait (a single Redis; replication is then
    # asynchronous: a failover may lose the last writes, typically well under a second's worth).
    redis_min_replica_acks: int = Field(0, ge=0)
    # How long that wait may take; past it the turn completes anyway and a warning is logged.
    redis_ack_timeout_ms: int = Field(1000, ge=1)
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
    # Deadlines of the calls to the model services (VITA_ORCH_*). A service that hangs fails the turn with
    # DEADLINE_EXCEEDED and a message naming the stage; the session is left as it was. A reply can be
    # long, so its streams get no total deadline: instead one for the first answer and one for the gap
    # between answers (the LLM's tokens, the speech service's audio while segments are owed to it).
    # Unary control calls (Describe, ReleaseSession).
    call_timeout_s: float = Field(10.0, gt=0)
    # Encoding one image, video or audio clip, start to end (a 60 s video is decoded and sampled first).
    encode_timeout_s: float = Field(60.0, gt=0)
    # A stream's first answer: the LLM's first token (queueing + prefill of the whole prompt), the first
    # audio of a speech segment, the answer to an audio commit.
    first_response_timeout_s: float = Field(30.0, gt=0)
    # Once a stream answers, the longest gap between two answers (one LLM decode step, one speech chunk),
    # and the longest a write may wait for the service to take it (flow control against a stalled service).
    stream_idle_timeout_s: float = Field(10.0, gt=0)
    # A call that fails before it produced any output (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED)
    # is tried once more on another replica, when the address lists several ("h1:p1,h2:p2").
    retry_on_other_replica: bool = True
    # LLM replica choice: "affine" sends every turn of a session to the replica that holds its KV cache
    # (rendezvous hashing of the session id, the same on every orchestrator); "round_robin" ignores the
    # session (a baseline to measure affinity against: each turn re-prefills where the cache is cold).
    llm_routing: Literal["affine", "round_robin"] = "affine"
    # A session's LLM replica is saturated when this orchestrator runs this many calls on it: the call then
    # goes to the least loaded other replica (a cold prefill there, instead of queueing). 0 = never spill.
    llm_spill_in_flight: int = Field(16, ge=0)
    # How often a dns:/// address is re-resolved (pods that came or went); also at once when every
    # replica it gave is failing.
    dns_refresh_s: float = Field(5.0, gt=0)
    # Admission control. Turns running at once on this orchestrator; one more is refused with
    # RESOURCE_EXHAUSTED and a retry hint instead of queueing.
    max_turns_in_flight: int = Field(64, ge=1)
    # Per tenant (services/orchestrator/auth.py), counted in Redis so that every orchestrator replica
    # shares the count: sessions that exist at once, and turns started per minute. 0 = no limit.
    tenant_max_sessions: int = Field(10_000, ge=0)
    tenant_turns_per_minute: int = Field(600, ge=0)
    # Maximum media per turn (images + videos), and encoded bytes per media item.
    max_media_per_turn: int = 4
    max_media_bytes: int = 32 * 1024 * 1024
    # Live camera: frames of the last seconds before a turn become its video; at most this many are kept.
    camera_window_s: float = 4.0
    max_camera_frames: int = 64
    # Media embeddings kept in memory to restore a cold LLM cache without re-encoding.
    embedding_cache_bytes: int = 256 * 1024 * 1024

    @field_validator("llm_address", "speech_address", "audio_address", "vision_address")
    @classmethod
    def _address_resolvable(cls, address: str) -> str:
        dns_name(address)  # a dns:/// address without a port fails here, at start, not at the first call
        return address

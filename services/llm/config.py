"""LLM service settings (VITA_LLM_*); shared settings come from `shared.settings.ServiceSettings`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class LLMSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITA_LLM_", extra="ignore")

    # Sequences decoded together in one step (continuous batching).
    max_batch_size: int = 16
    # Prompt tokens prefilled per engine step, so a long prompt never stalls running decodes for longer.
    prefill_chunk_tokens: int = 256
    # KV caches kept for idle sessions (LRU), by count and by total tokens.
    kv_cache_max_sessions: int = 64
    kv_cache_max_tokens: int = 262_144
    # Served context limit (prompt + reply) in tokens; 0 = the preset's value.
    max_context_tokens: int = 0
    # Admission control: requests that may wait for a batch slot beyond the max_batch_size running ones.
    # One more is refused with RESOURCE_EXHAUSTED and a `retry-after-ms` of busy_retry_after_ms (the
    # orchestrator then tries another replica, or tells its client), instead of queueing without bound.
    max_waiting_requests: int = Field(64, ge=0)
    busy_retry_after_ms: int = Field(1000, ge=1)

"""Per-stage costs of the fake model services (VITA_FAKE_*), parsed once at start.

Defaults are round figures of the order a single H100-class GPU gives VITA-1.5 at low load (first token
after ~40 ms plus prefill, ~40 decode tokens/s per sequence, speech ~10× real time); set them to the
figures measured for the hardware being planned (docs/CAPACITY.md).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FakeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITA_FAKE_", extra="ignore")

    # LLM. First token: fixed cost (queue hand-off, the first decode step) plus prefill per prompt token not
    # found in the session's cache; then one token per 1 / decode_tokens_per_s.
    llm_first_token_ms: float = Field(40.0, ge=0)
    llm_prefill_ms_per_token: float = Field(0.05, ge=0)
    llm_decode_tokens_per_s: float = Field(40.0, gt=0)
    # Reply length when max_new_tokens allows it: the reply then ends with <|im_end|> (finish "stop").
    llm_reply_tokens: int = Field(24, ge=1)
    # Sequences decoded at once; more wait in a queue (0 = unbounded).
    llm_max_batch: int = Field(0, ge=0)
    # Sessions whose prompt (a token sequence) is kept to compute cached / prefilled tokens, LRU.
    llm_cache_sessions: int = Field(100_000, ge=1)

    # Speech. A segment's first audio comes speech_first_chunk_ms after the segment reached the front of
    # the stream; later chunks come as fast as speech_realtime_factor allows (audio s per wall s).
    speech_first_chunk_ms: float = Field(60.0, ge=0)
    speech_realtime_factor: float = Field(10.0, gt=0)
    # Spoken length of text, in seconds per character (~15 characters/s of English).
    speech_s_per_char: float = Field(0.065, gt=0)
    # Synthesis streams served at once; more wait (0 = unbounded).
    speech_max_streams: int = Field(0, ge=0)

    # Encoders: audio per second of speech (plus a fixed cost), vision per tile or frame.
    audio_encode_ms: float = Field(15.0, ge=0)
    audio_encode_ms_per_s: float = Field(5.0, ge=0)
    vision_encode_ms_per_tile: float = Field(20.0, ge=0)
    encoder_max_concurrent: int = Field(0, ge=0)

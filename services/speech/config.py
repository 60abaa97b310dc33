"""Speech service settings (VITA_SPEECH_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SpeechSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITA_SPEECH_", extra="ignore")

    # Streams whose AR steps run in one batch.
    max_batch_size: int = 16
    # docs/MODEL.md#chunking: first segment of a reply decodes windows of 20 new tokens, later ones 40, with 10 tokens
    # of context on each side.
    first_chunk_tokens: int = 20
    chunk_tokens: int = 40
    context_tokens: int = 10
    # Later windows keep chunk_growth x (codec tokens the stream already delivered), between
    # first_chunk_tokens and max_chunk_tokens: each next window is ready before the audio before it runs out
    # down to 1.5x real time per stream (the reference's fixed 40 needs about 2.5x). 0: the reference.
    chunk_growth: float = Field(0.5, ge=0.0, le=4.0)
    max_chunk_tokens: int = Field(80, ge=1)
    # Playback-deadline scheduling: a stream whose listener has more than yield_buffer_ms of audio
    # buffered gives its AR row and codec windows to streams with less, first_chunk_yield_ms while a new
    # stream waits for its first audio. 0 turns the rule off (first come, first served).
    yield_buffer_ms: int = Field(3000, ge=0)
    first_chunk_yield_ms: int = Field(1000, ge=0)
    # The low-energy splice holds audio back only from a listener with at least this much buffered.
    splice_hold_buffer_ms: int = Field(1000, ge=0)
    # Runaway guard: a segment of n text tokens stops after 25·n codec tokens (0.6 s of speech per text
    # token; real speech needs ~0.1-0.3 s) and never after more than max_codec_tokens (25 s).
    codec_tokens_per_text_token: int = 25
    max_codec_tokens: int = 1000
    # Codec windows decoded per generator call. Calls always carry exactly this many windows (padded),
    # so a stream's audio is bit-identical whatever else is batched with it.
    codec_batch_size: int = 1
    # Longest text segment accepted, in characters (the orchestrator cuts segments far shorter).
    max_segment_chars: int = 2000
    # Admission control: synthesis streams open at once (one more is refused with RESOURCE_EXHAUSTED and a
    # `retry-after-ms` of busy_retry_after_ms; the orchestrator then tries another replica), and text
    # segments one stream may hold unfinished (a reply's segments arrive faster than they are spoken;
    # the bound is far above any reply of max_reply_tokens, so it only stops a runaway client).
    max_open_streams: int = Field(64, ge=1)
    max_queued_segments: int = Field(1024, ge=1)
    busy_retry_after_ms: int = Field(1000, ge=1)

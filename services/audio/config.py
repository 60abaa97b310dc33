"""Audio service settings (VITA_AUDIO_*); shared settings come from `shared.settings.ServiceSettings`."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.audio.vad import VadConfig
from shared.settings import MiB


class AudioSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITA_AUDIO_", extra="ignore")

    # Utterances (stream ends of speech and EncodeClip calls) encoded together in one forward pass.
    max_batch_size: int = Field(default=8, ge=1)
    # Threads that run VAD, resampling and fbank for the streams (~1% of a core per live stream) and
    # decode EncodeClip audio. Their own pool: VAD pins each thread it runs on to one torch thread.
    feature_threads: int = Field(default=4, ge=1)
    # Streams open at once; one more is RESOURCE_EXHAUSTED (retry on another replica or later).
    max_streams: int = Field(default=256, ge=1)

    # VAD defaults: a zero field in StreamStart.vad takes these (the reference server's values, docs/MODEL.md#vad).
    vad_start_threshold: float = 0.7
    vad_end_threshold: float = 0.55
    vad_min_silence_ms: int = 500
    vad_pre_roll_ms: int = 256
    vad_min_utterance_ms: int = 1000
    vad_max_utterance_ms: int = 30_000
    # The longest utterance a client may ask for (StreamStart.vad.max_utterance_ms): it bounds the audio
    # and features a stream holds. Also the longest EncodeClip clip, so any utterance can be re-encoded.
    max_utterance_limit_ms: int = Field(default=120_000, ge=1000)

    # Largest PCM chunk on a stream, as audio time at the declared format (clients send 20-100 ms).
    max_chunk_ms: int = Field(default=1000, ge=100)
    # EncodeClip: largest request audio (PCM or file bytes); keep it below VITA_MAX_MESSAGE_BYTES so a
    # user sees this limit named rather than a transport error.
    max_clip_bytes: int = Field(default=32 * MiB, ge=1)

    @model_validator(mode="after")
    def _check_vad_defaults(self) -> AudioSettings:
        # Fails at start-up (VadConfigError names the field) rather than on the first stream.
        config = self.vad_defaults()
        if config.max_utterance_ms > self.max_utterance_limit_ms:
            raise ValueError(
                f"vad_max_utterance_ms ({config.max_utterance_ms}) exceeds max_utterance_limit_ms "
                f"({self.max_utterance_limit_ms})"
            )
        return self

    def vad_defaults(self) -> VadConfig:
        return VadConfig(
            start_threshold=self.vad_start_threshold,
            end_threshold=self.vad_end_threshold,
            min_silence_ms=self.vad_min_silence_ms,
            pre_roll_ms=self.vad_pre_roll_ms,
            min_utterance_ms=self.vad_min_utterance_ms,
            max_utterance_ms=self.vad_max_utterance_ms,
        )

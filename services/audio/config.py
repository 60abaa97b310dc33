"""Audio service settings (VITA_AUDIO_*); shared settings come from `shared.settings.ServiceSettings`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.session_settings import MAX_UTTERANCE_LIMIT_MS
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

    # VAD settings come with each stream (StreamStart.vad); an unset field takes the default of the
    # shared session settings (shared/session_settings.py), the model CreateSession validates them with.

    # The longest utterance a client may ask for (StreamStart.vad.max_utterance_ms): it bounds the audio
    # and features a stream holds. Also the longest EncodeClip clip, so any utterance can be re-encoded.
    max_utterance_limit_ms: int = Field(default=MAX_UTTERANCE_LIMIT_MS, ge=1000)

    # Largest PCM chunk on a stream, as audio time at the declared format (clients send 20-100 ms).
    max_chunk_ms: int = Field(default=1000, ge=100)
    # EncodeClip: largest request audio (PCM or file bytes); keep it below VITA_MAX_MESSAGE_BYTES so a
    # user sees this limit named rather than a transport error.
    max_clip_bytes: int = Field(default=32 * MiB, ge=1)

"""A session's settings, with their defaults and bounds written once.

CreateSession validates a client's config with these models, and the services that receive part of it
(the audio service's VAD) validate and fill their requests with the same ones, so a value is accepted
or refused in one place, and with one message, whichever service it ends up in.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# The longest utterance a session may ask for. It bounds the audio and features an audio stream holds;
# an audio server may be configured with a lower limit.
MAX_UTTERANCE_LIMIT_MS = 120_000
# Dynamic image tiles: 1 keeps images cheap for real time; 12 is the model's largest tiling.
MAX_IMAGE_TILES = 12


class VadSettings(BaseModel):
    """Server voice activity detection. The defaults are the reference model's values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # False: push-to-talk, the client commits each utterance itself.
    enabled: bool = True
    # Speech starts at a probability >= start_threshold and ends after min_silence_ms below
    # end_threshold; values in between neither start nor end it (hysteresis).
    start_threshold: float = Field(0.7, gt=0.0, lt=1.0)
    end_threshold: float = Field(0.55, gt=0.0, lt=1.0)
    # Silence that ends an utterance.
    min_silence_ms: int = Field(500, gt=0)
    # Audio kept before the detected start of speech.
    pre_roll_ms: int = Field(256, ge=0)
    # Shorter utterances (clicks, coughs) are dropped.
    min_utterance_ms: int = Field(1000, gt=0)
    # Longer utterances are cut and dropped.
    max_utterance_ms: int = Field(30_000, gt=0, le=MAX_UTTERANCE_LIMIT_MS)

    @model_validator(mode="after")
    def _consistent(self) -> VadSettings:
        if self.end_threshold > self.start_threshold:
            raise ValueError(
                f"vad.end_threshold ({self.end_threshold}) must not exceed vad.start_threshold ({self.start_threshold})"
            )
        if self.max_utterance_ms <= self.min_utterance_ms:
            raise ValueError(
                f"vad.max_utterance_ms ({self.max_utterance_ms}) must exceed vad.min_utterance_ms "
                f"({self.min_utterance_ms})"
            )
        return self


class SessionSettings(BaseModel):
    """A session's configuration with every default filled in (as stored with the session)."""

    # Upper bound on reply length, in tokens; a deployment caps it further (VITA_ORCH_MAX_REPLY_TOKENS_LIMIT).
    max_reply_tokens: int = Field(256, gt=0)
    speech_output: bool = True
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int | None = Field(None, ge=0)
    max_image_tiles: int = Field(1, ge=1, le=MAX_IMAGE_TILES)
    vad: VadSettings = Field(default_factory=VadSettings)
    # Turns of history kept in the prompt.
    max_history_turns: int = Field(8, ge=0)


def describe(error: ValidationError, prefix: str = "") -> str:
    """One line per problem, naming the field as a client writes it ("vad.max_utterance_ms: ...")."""
    lines = []
    for problem in error.errors(include_url=False):
        message = problem["msg"].removeprefix("Value error, ")
        location = ".".join(str(part) for part in (prefix, *problem["loc"]) if part != "")
        if location and not message.startswith(location):
            given = problem.get("input")
            message = f"{location}: {message}" + (f" (got {given!r})" if isinstance(given, (int, float)) else "")
        lines.append(message)
    return "; ".join(lines)

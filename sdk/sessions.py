"""Session configuration and the stored session, as plain dataclasses (protobuf stays inside the SDK)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from vita.assistant.v1 import assistant_pb2 as pb


def enum_text(message, field_name: str) -> str:
    """A string field, or an enum field as the lower-case tail of its value's name
    (TURN_OUTCOME_BARGED_IN → "barged_in"; the unspecified value → "")."""
    value = getattr(message, field_name)
    enum = message.DESCRIPTOR.fields_by_name[field_name].enum_type
    if enum is None:
        return value
    prefix = enum.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return "" if value == 0 else enum.values_by_number[value].name.removeprefix(prefix).lower()


@dataclass(frozen=True)
class VoiceActivity:
    """Server VAD settings; None leaves the server default."""

    enabled: bool | None = None  # False: push-to-talk, the client commits
    start_threshold: float | None = None
    end_threshold: float | None = None
    min_silence_ms: int | None = None
    pre_roll_ms: int | None = None
    min_utterance_ms: int | None = None
    max_utterance_ms: int | None = None

    def to_proto(self) -> pb.VoiceActivityConfig:
        return pb.VoiceActivityConfig(**_set_fields(self))

    @classmethod
    def from_proto(cls, message: pb.VoiceActivityConfig) -> "VoiceActivity":
        return cls(**_present_fields(cls, message))


@dataclass(frozen=True)
class SessionConfig:
    """What CreateSession accepts; None leaves the server default (the stored config has every field set)."""

    max_reply_tokens: int | None = None
    speech_output: bool | None = None
    temperature: float | None = None
    seed: int | None = None
    max_image_tiles: int | None = None
    vad: VoiceActivity | None = None
    max_history_turns: int | None = None

    def to_proto(self) -> pb.SessionConfig:
        values = _set_fields(self)
        if self.vad is not None:
            values["vad"] = self.vad.to_proto()
        return pb.SessionConfig(**values)

    @classmethod
    def from_proto(cls, message: pb.SessionConfig) -> "SessionConfig":
        values = _present_fields(cls, message)
        if message.HasField("vad"):
            values["vad"] = VoiceActivity.from_proto(message.vad)
        return cls(**values)


@dataclass(frozen=True)
class HistoryTurn:
    turn_id: str
    user_text: str  # empty for a spoken turn
    reply_text: str  # what the server kept of the reply
    outcome: str  # "completed", "cancelled", "barged_in", "suppressed" or "failed"
    media: tuple[str, ...]  # "image", "video", "audio", in order
    started_unix_ms: int


@dataclass(frozen=True)
class Session:
    session_id: str
    config: SessionConfig
    history: tuple[HistoryTurn, ...] = ()
    created_unix_ms: int = 0
    running_turn_id: str = ""  # empty when idle

    @classmethod
    def from_proto(cls, message: pb.Session) -> "Session":
        history = tuple(
            HistoryTurn(t.turn_id, t.user_text, t.reply_text, enum_text(t, "outcome"), tuple(t.media),
                        t.started_unix_ms)
            for t in message.history
        )
        return cls(message.session_id, SessionConfig.from_proto(message.config), history, message.created_unix_ms,
                   message.running_turn_id)


def _set_fields(config) -> dict:
    return {f.name: getattr(config, f.name) for f in fields(config)
            if f.name != "vad" and getattr(config, f.name) is not None}


def _present_fields(cls, message) -> dict:
    return {f.name: getattr(message, f.name) for f in fields(cls) if f.name != "vad" and message.HasField(f.name)}

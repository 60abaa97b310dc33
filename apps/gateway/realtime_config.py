"""A Realtime session's settings: read from `session.update` in either dialect's shape, mapped onto the
SDK's SessionConfig, and written back as the dialect's session object."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import sdk
from apps.gateway.audio import OPENAI_RATE_HZ
from apps.gateway.errors import GatewayError
from apps.gateway.realtime_protocol import Dialect


@dataclass(frozen=True)
class RealtimeConfig:
    speech_output: bool = True
    # turn_detection: server_vad (the orchestrator's VAD starts turns) or None (the client commits).
    vad: bool = True
    vad_threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None  # None: "inf", the server's default
    # Echoed back, not used: the model has one voice, and no system prompt is sent.
    instructions: str = ""
    voice: str = "alloy"

    def session_config(self) -> sdk.SessionConfig:
        """The settings the orchestrator holds per session (the rest is per turn, or the gateway's)."""
        vad = sdk.VoiceActivity(enabled=self.vad, start_threshold=self.vad_threshold,
                                pre_roll_ms=self.prefix_padding_ms, min_silence_ms=self.silence_duration_ms)
        return sdk.SessionConfig(speech_output=self.speech_output, temperature=self.temperature, vad=vad,
                                 max_reply_tokens=self.max_output_tokens)

    def fixed_settings(self) -> sdk.SessionConfig:
        """What only a new session can change. The reply length is also sent with each typed turn, so a
        later change of max_output_tokens still applies to typed turns (spoken ones keep the session's)."""
        return replace(self.session_config(), max_reply_tokens=None)

    def turn_detection(self) -> dict | None:
        if not self.vad:
            return None
        return {"type": "server_vad", "threshold": self.vad_threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms, "create_response": True,
                "interrupt_response": True}

    def session_object(self, session_id: str, model: str, dialect: Dialect) -> dict:
        max_tokens = "inf" if self.max_output_tokens is None else self.max_output_tokens
        common = {"id": session_id, "object": "realtime.session", "model": model, "instructions": self.instructions,
                  "tools": [], "tool_choice": "auto", "temperature": self.temperature}
        if dialect.is_beta:
            return {**common, "modalities": ["text", "audio"] if self.speech_output else ["text"],
                    "voice": self.voice, "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                    "turn_detection": self.turn_detection(), "input_audio_transcription": None,
                    "max_response_output_tokens": max_tokens}
        audio_format = {"type": "audio/pcm", "rate": OPENAI_RATE_HZ}
        return {**common, "type": "realtime", "output_modalities": ["audio"] if self.speech_output else ["text"],
                "audio": {"input": {"format": audio_format, "turn_detection": self.turn_detection(),
                                    "transcription": None},
                          "output": {"format": audio_format, "voice": self.voice}},
                "max_output_tokens": max_tokens}


def apply_update(config: RealtimeConfig, session: dict) -> RealtimeConfig:
    """`session.update`'s session object (beta or GA shape) applied to `config`; fields left out keep
    their values. Values the gateway cannot serve raise GatewayError naming the field."""
    changes: dict = {}
    modalities = session.get("output_modalities", session.get("modalities"))
    if modalities is not None:
        changes["speech_output"] = _speech_output(modalities, "session.output_modalities")
    audio = _object(session.get("audio", {}), "session.audio")
    audio_in = _object(audio.get("input", {}), "session.audio.input")
    audio_out = _object(audio.get("output", {}), "session.audio.output")
    for path, value in (("session.input_audio_format", session.get("input_audio_format")),
                        ("session.output_audio_format", session.get("output_audio_format")),
                        ("session.audio.input.format", audio_in.get("format")),
                        ("session.audio.output.format", audio_out.get("format"))):
        if value is not None:
            _check_format(value, path)
    if "turn_detection" in session or "turn_detection" in audio_in:
        detection = session["turn_detection"] if "turn_detection" in session else audio_in["turn_detection"]
        changes.update(_turn_detection(detection))
    for key in ("instructions", "voice"):
        value = session.get(key, audio_out.get(key) if key == "voice" else None)
        if value is not None:
            if not isinstance(value, str):
                raise GatewayError(f"session.{key} must be a string", code="invalid_value", param=f"session.{key}")
            changes[key] = value[:100_000]
    if session.get("temperature") is not None:
        changes["temperature"] = _number(session["temperature"], "session.temperature", 0.0, 2.0)
    if "max_output_tokens" in session or "max_response_output_tokens" in session:
        value = session.get("max_output_tokens", session.get("max_response_output_tokens"))
        changes["max_output_tokens"] = max_tokens(value, "session.max_output_tokens")
    if session.get("tools"):
        raise GatewayError("tools (function calling) are not supported", code="unsupported_value", param="session.tools")
    if session.get("input_audio_transcription") or audio_in.get("transcription"):
        raise GatewayError("input audio transcription is not supported", code="unsupported_value",
                           param="session.audio.input.transcription")
    return replace(config, **changes)


def max_tokens(value, param: str) -> int | None:
    if value is None or value == "inf":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GatewayError(f"{param} must be a positive integer or \"inf\"", code="invalid_value", param=param)
    return value


def _speech_output(modalities, param: str) -> bool:
    if not isinstance(modalities, list) or not modalities or not set(modalities) <= {"text", "audio"}:
        raise GatewayError(f"{param} must be [\"audio\"], [\"text\"] or [\"text\", \"audio\"]",
                           code="invalid_value", param=param)
    return "audio" in modalities


def _turn_detection(detection) -> dict:
    if detection is None:
        return {"vad": False}
    detection = _object(detection, "session.turn_detection")
    kind = detection.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise GatewayError("turn_detection.type must be server_vad (or null for manual commits)",
                           code="invalid_value", param="session.turn_detection.type")
    if detection.get("create_response") is False:
        raise GatewayError("turn_detection.create_response=false is not supported: server VAD always answers",
                           code="unsupported_value", param="session.turn_detection.create_response")
    out: dict = {"vad": True}
    if detection.get("threshold") is not None:
        out["vad_threshold"] = _number(detection["threshold"], "session.turn_detection.threshold", 0.0, 1.0)
    for key, field in (("prefix_padding_ms", "prefix_padding_ms"), ("silence_duration_ms", "silence_duration_ms")):
        if detection.get(key) is not None:
            out[field] = int(_number(detection[key], f"session.turn_detection.{key}", 0, 60_000))
    return out


def _check_format(value, param: str) -> None:
    if value == "pcm16":
        return
    if isinstance(value, dict) and value.get("type") == "audio/pcm" and value.get("rate", OPENAI_RATE_HZ) == OPENAI_RATE_HZ:
        return
    raise GatewayError(f"{param}: only PCM16 at 24 kHz (\"pcm16\" / {{\"type\": \"audio/pcm\", \"rate\": 24000}}) "
                       "is supported", code="unsupported_audio_format", param=param)


def _object(value, param: str) -> dict:
    if not isinstance(value, dict):
        raise GatewayError(f"{param} must be an object", code="invalid_value", param=param)
    return value


def _number(value, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise GatewayError(f"{param} must be a number in [{low}, {high}]", code="invalid_value", param=param)
    return float(value)

"""Checks of the audio service's requests that need no audio: formats, VAD settings. A failed check is a
`RequestRejected`, which the handlers turn into INVALID_ARGUMENT with its message."""

from __future__ import annotations

from services.audio.features import AudioInputError, PcmEncoding, validate_sample_rate
from services.audio.vad import VadConfig
from vita.audio.v1 import audio_pb2

_ENCODINGS = {
    audio_pb2.SAMPLE_ENCODING_PCM16: PcmEncoding.PCM16,
    audio_pb2.SAMPLE_ENCODING_F32: PcmEncoding.F32,
}
_ENCODING_HINT = "use SAMPLE_ENCODING_PCM16 (signed 16-bit little-endian) or SAMPLE_ENCODING_F32 (float32 in [-1, 1])"


class RequestRejected(Exception):
    """A request check failed before any work: INVALID_ARGUMENT with this message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def stream_encoding(fmt: audio_pb2.AudioFormat) -> PcmEncoding:
    encoding = _ENCODINGS.get(fmt.encoding)
    if encoding is not None:
        return encoding
    if fmt.encoding == audio_pb2.SAMPLE_ENCODING_UNSPECIFIED:
        raise RequestRejected(f"format.encoding is missing; {_ENCODING_HINT}")
    raise RequestRejected(f"format.encoding {fmt.encoding} is not a known sample encoding; {_ENCODING_HINT}")


def sample_rate(fmt: audio_pb2.AudioFormat) -> int:
    try:
        return validate_sample_rate(fmt.sample_rate_hz)
    except AudioInputError as error:
        raise RequestRejected(f"format.sample_rate_hz: {error}") from None


def vad_config(vad: audio_pb2.VadConfig, limit: int) -> VadConfig:
    """The stream's VAD settings, validated by the shared session settings (VadConfigError names the
    field). An unset field takes the shared default; an unset max_utterance_ms at most this server's
    limit. float32 fields are rounded back to what the client wrote."""
    chosen = {
        field.name: round(value, 6) if isinstance(value, float) else value for field, value in vad.ListFields()
    }
    chosen["enabled"] = vad.enabled
    chosen.setdefault("max_utterance_ms", min(VadConfig.model_fields["max_utterance_ms"].default, limit))
    config = VadConfig(**chosen)
    if config.max_utterance_ms > limit:
        raise RequestRejected(f"vad.max_utterance_ms {config.max_utterance_ms} exceeds this server's limit of {limit} ms")
    return config

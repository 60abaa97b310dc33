"""Audio conversions at the gateway's edge: base64, PCM16 at OpenAI's 24 kHz, WAV wrapping, and decoding
the audio files chat completions accept (WAV, FLAC, MP3) to the mono PCM16 the audio service takes."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import soundfile
import soxr

from apps.gateway.errors import GatewayError

# OpenAI's Realtime and chat audio: mono signed 16-bit little-endian at 24 kHz.
OPENAI_RATE_HZ = 24_000
# What the audio service's models take; the orchestrator resamples anything else, but decoding a file
# here straight to this rate saves a second resampling.
SPEECH_INPUT_RATE_HZ = 16_000
PCM16_BYTES = 2


def b64decode(data: object, param: str) -> bytes:
    if not isinstance(data, str):
        raise GatewayError(f"{param} must be a base64 string", code="invalid_base64", param=param)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError(f"{param} is not valid base64", code="invalid_base64", param=param) from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def to_openai_rate(pcm: bytes, sample_rate_hz: int) -> bytes:
    """Reply audio as OpenAI clients expect it (24 kHz); the speech service already speaks 24 kHz, so this
    is a copy-free pass in practice."""
    if sample_rate_hz == OPENAI_RATE_HZ or not pcm:
        return pcm
    samples = np.frombuffer(pcm[: len(pcm) // PCM16_BYTES * PCM16_BYTES], dtype="<i2")
    resampled = soxr.resample(samples, sample_rate_hz, OPENAI_RATE_HZ)
    return np.asarray(resampled, dtype="<i2").tobytes()


def wav_bytes(pcm: bytes, sample_rate_hz: int = OPENAI_RATE_HZ) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2")
    out = io.BytesIO()
    soundfile.write(out, samples, sample_rate_hz, subtype="PCM_16", format="WAV")
    return out.getvalue()


def decode_audio_file(data: bytes, declared_format: str, param: str) -> bytes:
    """A WAV, FLAC or MP3 file → mono PCM16 at SPEECH_INPUT_RATE_HZ. Undecodable audio is the client's
    mistake (400), named by `param`."""
    try:
        samples, rate = _read(data, declared_format)
    except Exception:  # every decoder failure means the same thing to the client: bad audio bytes
        raise GatewayError(f"{param} is not decodable {declared_format} audio", code="invalid_audio",
                           param=param) from None
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise GatewayError(f"{param} holds no audio samples", code="invalid_audio", param=param)
    if rate != SPEECH_INPUT_RATE_HZ:
        samples = soxr.resample(samples, rate, SPEECH_INPUT_RATE_HZ)
    clipped = np.clip(np.nan_to_num(samples), -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


def _read(data: bytes, declared_format: str) -> tuple[np.ndarray, int]:
    if declared_format == "mp3":
        return _read_with_av(data)
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return samples, rate


def _read_with_av(data: bytes) -> tuple[np.ndarray, int]:
    import av  # only MP3 needs it; soundfile reads WAV and FLAC

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SPEECH_INPUT_RATE_HZ)
        pieces = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                pieces.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return samples.astype(np.float32), SPEECH_INPUT_RATE_HZ

"""Audio in → 16 kHz float waveform → raw log-mel fbank (docs/MODEL.md#audio-features).

Everything here is CPU work that runs while the user speaks: decoding and validating the declared PCM,
resampling to 16 kHz with soxr (one-shot or as a per-stream `StreamingResampler`), decoding WAV/FLAC/OGG
files, and kaldi-native-fbank with exactly the options of docs/MODEL.md#audio-features. The fbank
returned here is the raw log-mel: global CMVN is applied once, inside the encoder (`encoder.GlobalCMVN`),
as in the reference.

Every rejection raises an `AudioInputError` subclass whose message a client can act on (it names the
field, the value and what is accepted) and never carries internal details.
"""

from __future__ import annotations

import enum
import io
import struct

import kaldi_native_fbank as knf
import numpy as np
import soundfile
import soxr

MODEL_SAMPLE_RATE_HZ = 16000
MIN_SAMPLE_RATE_HZ = 8000
MAX_SAMPLE_RATE_HZ = 192000
NUM_MEL_BINS = 80
FRAME_LENGTH_SAMPLES = 400  # 25 ms at 16 kHz
FRAME_SHIFT_SAMPLES = 160  # 10 ms at 16 kHz
# torchaudio.compliance.kaldi works on int16-scaled floats; the reference multiplies by 2^15.
WAVEFORM_SCALE = 32768.0
# Float PCM is declared as [-1, 1]. A little overshoot is normal after a client-side resampler or gain;
# anything beyond this is almost certainly integer-scaled samples sent as f32, which would be garbage.
F32_MAX_ABS = 2.0
# soxr "HQ": the library default; streaming output is bit-identical to one-shot (tests), at a delay of
# ~21 ms (44.1/48 kHz in) to ~66 ms (8 kHz in) of withheld samples until more audio or a flush arrives.
RESAMPLE_QUALITY = "HQ"
ACCEPTED_FILE_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "OGG"})
_WAV_SIZE_PLACEHOLDER_MIN = 0x7FFF0000


class AudioInputError(ValueError):
    """Audio a client sent that cannot be used; the message says what to fix."""


class SampleRateError(AudioInputError):
    """The sample rate is missing or outside 8000..192000 Hz."""


class PcmFormatError(AudioInputError):
    """The encoding is unknown or the byte count does not fit it."""


class NonFiniteAudioError(AudioInputError):
    """Float samples contain NaN/inf or are far outside [-1, 1]."""


class EmptyAudioError(AudioInputError):
    """No samples at all."""


class AudioFileError(AudioInputError):
    """A file that is corrupt, truncated or not WAV/FLAC/OGG."""


class AudioTooShortError(AudioInputError):
    """Fewer samples than the encoder needs for one output frame (7 fbank frames, docs/MODEL.md#audio-encoder)."""


class PcmEncoding(str, enum.Enum):
    PCM16 = "pcm16"  # signed 16-bit little-endian
    F32 = "f32"  # IEEE float32 little-endian, nominal range [-1, 1]

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self is PcmEncoding.PCM16 else 4


def parse_encoding(encoding: PcmEncoding | str) -> PcmEncoding:
    try:
        return PcmEncoding(encoding)
    except ValueError:
        accepted = ", ".join(repr(e.value) for e in PcmEncoding)
        raise PcmFormatError(f"unknown sample encoding {encoding!r}; use one of {accepted}") from None


def validate_sample_rate(sample_rate_hz: int | None) -> int:
    """The declared rate as an int, or a `SampleRateError` that says what is accepted."""
    if sample_rate_hz is None or sample_rate_hz == 0:
        raise SampleRateError(
            f"sample rate is missing; declare the PCM sample rate in Hz "
            f"({MIN_SAMPLE_RATE_HZ}..{MAX_SAMPLE_RATE_HZ}, e.g. 16000 or 48000)"
        )
    if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, (int, np.integer)):
        raise SampleRateError(f"sample rate must be a whole number of Hz, got {sample_rate_hz!r}")
    if not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise SampleRateError(
            f"sample rate {int(sample_rate_hz)} Hz is not supported; "
            f"use {MIN_SAMPLE_RATE_HZ}..{MAX_SAMPLE_RATE_HZ} Hz"
        )
    return int(sample_rate_hz)


def decode_pcm(data: bytes, encoding: PcmEncoding | str) -> np.ndarray:
    """Little-endian PCM bytes → float32 mono samples in the nominal range [-1, 1].

    Raises `EmptyAudioError` for no bytes, `PcmFormatError` for a byte count that is not a whole number of
    samples, and `NonFiniteAudioError` for NaN/inf or wildly out-of-range floats.
    """
    encoding = parse_encoding(encoding)
    if len(data) == 0:
        raise EmptyAudioError("the audio is empty: no PCM bytes were sent")
    width = encoding.bytes_per_sample
    if len(data) % width:
        raise PcmFormatError(
            f"{len(data)} bytes is not a whole number of {encoding.value} samples "
            f"({width} bytes each); send complete samples (a chunk may not split a sample)"
        )
    if encoding is PcmEncoding.PCM16:
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(WAVEFORM_SCALE)
    samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    validate_float_samples(samples)
    return samples


def validate_float_samples(samples: np.ndarray) -> None:
    """Rejects NaN/inf and integer-scaled floats (`NonFiniteAudioError`)."""
    finite = np.isfinite(samples)
    if not finite.all():
        first_bad = int(np.argmin(finite))
        raise NonFiniteAudioError(
            f"float audio contains NaN or infinity (first at sample {first_bad}); send finite samples in [-1, 1]"
        )
    peak = float(np.abs(samples).max(initial=0.0))
    if peak > F32_MAX_ABS:
        raise NonFiniteAudioError(
            f"float audio peaks at {peak:g}, far outside [-1, 1]; scale samples to [-1, 1] "
            f"(integer-scaled samples should be sent as pcm16)"
        )


def resample_to_model_rate(samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """One-shot resampling of a whole clip to 16 kHz (float32)."""
    sample_rate_hz = validate_sample_rate(sample_rate_hz)
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if sample_rate_hz == MODEL_SAMPLE_RATE_HZ:
        return samples
    return soxr.resample(samples, sample_rate_hz, MODEL_SAMPLE_RATE_HZ, quality=RESAMPLE_QUALITY)


class StreamingResampler:
    """Per-stream resampler to 16 kHz whose concatenated output equals `resample_to_model_rate`.

    soxr keeps filter state between chunks and withholds its filter delay until more input or `flush()`;
    output sample i is stream time i / 16000 s (the delay is compensated), so offsets stay exact.
    """

    def __init__(self, sample_rate_hz: int) -> None:
        self.sample_rate_hz = validate_sample_rate(sample_rate_hz)
        self._stream: soxr.ResampleStream | None = None
        self._reset()

    def _reset(self) -> None:
        if self.sample_rate_hz == MODEL_SAMPLE_RATE_HZ:
            self._stream = None
        else:
            self._stream = soxr.ResampleStream(
                self.sample_rate_hz, MODEL_SAMPLE_RATE_HZ, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples, last=False)

    def flush(self) -> np.ndarray:
        """Everything still held back; the resampler then starts afresh for later audio."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._reset()
        return tail


def decode_audio_file(data: bytes) -> np.ndarray:
    """A WAV/FLAC/OGG file → float32 mono 16 kHz samples.

    Channel 0 is used, as the reference does (torchaudio.compliance.kaldi reads channel 0).
    """
    if len(data) == 0:
        raise EmptyAudioError("the audio file is empty")
    _check_wav_not_truncated(data)
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as audio_file:
            if audio_file.format not in ACCEPTED_FILE_FORMATS:
                raise AudioFileError(
                    f"audio files must be WAV, FLAC or OGG; this one is {audio_file.format}"
                )
            sample_rate_hz = audio_file.samplerate
            samples = audio_file.read(dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as err:
        # libsndfile's own description ("Format not recognised.") is useful and leaks nothing internal.
        raise AudioFileError(
            f"the audio file could not be decoded ({err.error_string.rstrip('.')}); "
            f"send an uncorrupted WAV, FLAC or OGG (Vorbis/Opus) file"
        ) from None
    if samples.shape[0] == 0:
        raise EmptyAudioError("the audio file contains no samples")
    channel0 = np.ascontiguousarray(samples[:, 0])
    validate_float_samples(channel0)
    return resample_to_model_rate(channel0, validate_sample_rate(sample_rate_hz))


def _check_wav_not_truncated(data: bytes) -> None:
    """libsndfile silently reads what is left of a WAV cut mid-data; a truncated upload must fail."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        (chunk_size,) = struct.unpack_from("<I", data, offset + 4)
        body = offset + 8
        if chunk_id == b"data":
            # Streaming writers (espeak-ng --stdout, sox -, ffmpeg pipes) leave 0 or a ~2^31/2^32 placeholder
            # because they cannot seek back; such sizes mean "until the end of the file".
            placeholder = chunk_size == 0 or chunk_size >= _WAV_SIZE_PLACEHOLDER_MIN
            if not placeholder and body + chunk_size > len(data):
                raise AudioFileError(
                    f"the WAV file is truncated: its header announces {chunk_size} bytes of audio but only "
                    f"{len(data) - body} are present; upload the complete file"
                )
            return
        offset = body + chunk_size + (chunk_size & 1)  # RIFF chunks are word-aligned


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float [-1, 1] → int16 (clipped), the format kept in history."""
    scaled = np.round(np.asarray(samples, dtype=np.float32) * WAVEFORM_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def pcm16_to_float(pcm16k: np.ndarray) -> np.ndarray:
    return np.asarray(pcm16k, dtype=np.int16).astype(np.float32) / np.float32(WAVEFORM_SCALE)


def clip_for_encoding(samples16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A whole 16 kHz clip → (int16 PCM for history, raw fbank [T, 80] of exactly that PCM).

    Streams compute their features from the same int16 samples, so a clip encoded here, a stream's
    utterance and a re-encode from history all agree.
    """
    pcm16k = to_pcm16(samples16k)
    return pcm16k, compute_fbank(pcm16_to_float(pcm16k))


# --- fbank ----------------------------------------------------------------------------------------


def fbank_options() -> knf.FbankOptions:
    """kaldi-native-fbank options equal to torchaudio's kaldi.fbank as the reference calls it, without
    the dither (docs/MODEL.md#d-dither)."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(MODEL_SAMPLE_RATE_HZ)
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.dither = 0.0  # knf defaults to 3e-5; 0 keeps features deterministic
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.round_to_power_of_two = True
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = NUM_MEL_BINS  # knf defaults to 23
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0  # 0 = Nyquist
    opts.use_energy = False
    opts.use_power = True
    opts.use_log_fbank = True
    opts.energy_floor = 0.0
    return opts


def num_fbank_frames(num_samples: int) -> int:
    """T = 1 + (N − 400) // 160 with snip_edges, 0 below one frame."""
    if num_samples < FRAME_LENGTH_SAMPLES:
        return 0
    return 1 + (num_samples - FRAME_LENGTH_SAMPLES) // FRAME_SHIFT_SAMPLES


class IncrementalFbank:
    """Fbank of a growing 16 kHz utterance: feed samples as they arrive, take the frames that are ready.

    With snip_edges a frame depends only on its own 400 samples, so the frames of a prefix are exactly
    the first frames of the whole (tests check bit-equality with `compute_fbank`).
    """

    def __init__(self) -> None:
        self._extractor = knf.OnlineFbank(fbank_options())
        self._frames_taken = 0
        self.num_samples = 0

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Adds samples (float, [-1, 1]) and returns the newly completed frames [k, 80] float32."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.size:
            self._extractor.accept_waveform(float(MODEL_SAMPLE_RATE_HZ), samples * np.float32(WAVEFORM_SCALE))
            self.num_samples += samples.size
        ready = self._extractor.num_frames_ready
        if ready == self._frames_taken:
            return np.zeros((0, NUM_MEL_BINS), dtype=np.float32)
        frames = np.stack([self._extractor.get_frame(i) for i in range(self._frames_taken, ready)])
        # The caller keeps the frames; drop them here so a long utterance is held once, not twice.
        self._extractor.pop(ready - self._frames_taken)
        self._frames_taken = ready
        return frames

    @property
    def num_frames(self) -> int:
        return self._frames_taken


def compute_fbank(samples: np.ndarray) -> np.ndarray:
    """One-shot raw log-mel fbank [T, 80] float32 of a 16 kHz waveform in [-1, 1]."""
    return IncrementalFbank().accept(samples)

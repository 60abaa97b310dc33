"""PCM decoding and validation, resampling, audio files and fbank (docs/MODEL.md#audio-features)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile

from services.audio.features import (
    AudioFileError,
    AudioInputError,
    EmptyAudioError,
    IncrementalFbank,
    NonFiniteAudioError,
    PcmFormatError,
    SampleRateError,
    StreamingResampler,
    compute_fbank,
    decode_audio_file,
    decode_pcm,
    fbank_options,
    num_fbank_frames,
    resample_to_model_rate,
    to_pcm16,
    validate_sample_rate,
)

from .conftest import noise

DECLARED_RATES = [8000, 16000, 22050, 24000, 44100, 48000]


def sine(freq_hz: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def wav_bytes(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


# --- PCM -------------------------------------------------------------------------------------------


def test_pcm16_and_f32_decode_to_the_same_floats():
    ints = np.array([0, 1, -1, 32767, -32768, 12345], dtype="<i2")
    from_pcm16 = decode_pcm(ints.tobytes(), "pcm16")
    np.testing.assert_array_equal(from_pcm16, ints.astype(np.float32) / 32768)
    np.testing.assert_array_equal(decode_pcm(from_pcm16.astype("<f4").tobytes(), "f32"), from_pcm16)


@pytest.mark.parametrize("rate", [None, 0, 1, 7999, 192001, 10_000_000, 44100.5, True])
def test_bad_sample_rates_are_rejected_with_the_accepted_range(rate):
    with pytest.raises(SampleRateError) as err:
        validate_sample_rate(rate)
    assert "Hz" in str(err.value)
    with pytest.raises(SampleRateError):
        StreamingResampler(rate)


@pytest.mark.parametrize("rate", [8000, 16000, 192000])
def test_sample_rate_bounds_are_accepted(rate):
    assert validate_sample_rate(rate) == rate


@pytest.mark.parametrize(("encoding", "size"), [("pcm16", 3), ("pcm16", 1001), ("f32", 6), ("f32", 4003)])
def test_partial_samples_are_rejected(encoding, size):
    with pytest.raises(PcmFormatError, match="whole number"):
        decode_pcm(b"\x00" * size, encoding)


def test_empty_pcm_and_unknown_encoding_are_rejected():
    with pytest.raises(EmptyAudioError):
        decode_pcm(b"", "pcm16")
    with pytest.raises(PcmFormatError, match="pcm16"):
        decode_pcm(b"\x00\x00", "mp3")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_audio_is_rejected(bad):
    samples = np.zeros(100, dtype="<f4")
    samples[37] = bad
    with pytest.raises(NonFiniteAudioError, match="sample 37"):
        decode_pcm(samples.tobytes(), "f32")


def test_integer_scaled_floats_are_rejected():
    with pytest.raises(NonFiniteAudioError, match=r"\[-1, 1\]"):
        decode_pcm((np.ones(10, dtype="<f4") * 12000).tobytes(), "f32")


def test_every_input_error_is_a_value_error():
    assert issubclass(AudioInputError, ValueError)
    for cls in (SampleRateError, PcmFormatError, NonFiniteAudioError, EmptyAudioError, AudioFileError):
        assert issubclass(cls, AudioInputError)


# --- resampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", DECLARED_RATES)
def test_resampling_keeps_frequency_amplitude_and_duration(rate):
    tone = sine(1000.0, rate, 1.0)
    out = resample_to_model_rate(tone, rate)
    assert abs(len(out) - 16000) <= 1
    assert abs(peak_frequency(out, 16000) - 1000.0) <= 1.0
    middle = out[2000:-2000]  # away from the filter's edge transients
    assert abs(np.sqrt(np.mean(middle**2)) - 0.5 / np.sqrt(2)) < 0.005


@pytest.mark.parametrize("rate", [44100, 48000])
def test_resampling_removes_content_above_the_new_nyquist(rate):
    out = resample_to_model_rate(sine(11000.0, rate, 1.0), rate)
    assert np.sqrt(np.mean(out[2000:-2000] ** 2)) < 1e-3  # an aliased tone would be ~0.35 rms


@pytest.mark.parametrize("rate", DECLARED_RATES)
def test_streaming_resampler_equals_one_shot(rate):
    signal = sine(440.0, rate, 2.0) + noise(2.0 * rate / 16000, 0.05)[: int(rate * 2.0)]
    one_shot = resample_to_model_rate(signal, rate)
    resampler = StreamingResampler(rate)
    step = rate * 40 // 1000  # 40 ms chunks
    pieces = [resampler.push(signal[i : i + step]) for i in range(0, len(signal), step)]
    streamed = np.concatenate(pieces + [resampler.flush()])
    assert len(streamed) == len(one_shot)
    np.testing.assert_allclose(streamed, one_shot, atol=1e-6)


# --- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")]
)
def test_audio_files_decode_to_16k_mono(fmt, subtype):
    left = sine(500.0, 44100, 1.0)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    samples = decode_audio_file(wav_bytes(stereo, 44100, fmt, subtype))
    assert samples.dtype == np.float32
    assert abs(len(samples) - 16000) <= 1
    assert abs(peak_frequency(samples, 16000) - 500.0) <= 1.0  # channel 0 is used, as in the reference


def test_corrupt_bytes_are_not_an_audio_file():
    with pytest.raises(AudioFileError, match="could not be decoded") as err:
        decode_audio_file(b"definitely not audio " * 50)
    assert "BytesIO" not in str(err.value) and "0x" not in str(err.value)


def test_truncated_wav_is_rejected():
    data = wav_bytes(sine(300.0, 16000, 1.0), 16000)
    with pytest.raises(AudioFileError, match="truncated"):
        decode_audio_file(data[: len(data) // 2])
    with pytest.raises(AudioFileError):
        decode_audio_file(data[:30])  # cut inside the header


def test_truncated_flac_and_ogg_are_rejected():
    for fmt, subtype in (("FLAC", "PCM_16"), ("OGG", "VORBIS")):
        data = wav_bytes(sine(300.0, 16000, 1.0), 16000, fmt, subtype)
        with pytest.raises(AudioFileError):
            decode_audio_file(data[: len(data) // 2])


def test_streamed_wav_with_placeholder_length_is_accepted():
    data = bytearray(wav_bytes(sine(300.0, 16000, 0.5), 16000))
    data_chunk = data.index(b"data")
    struct.pack_into("<I", data, data_chunk + 4, 0x7FFFF000)  # what espeak-ng --stdout writes
    assert len(decode_audio_file(bytes(data))) == 8000


def test_unsupported_codec_in_a_wav_is_rejected():
    data = bytearray(wav_bytes(sine(300.0, 16000, 0.5), 16000))
    struct.pack_into("<H", data, 20, 0x0055)  # format tag: MPEG layer 3, which libsndfile cannot read in WAV
    with pytest.raises(AudioFileError, match="could not be decoded"):
        decode_audio_file(bytes(data))


def test_other_containers_are_rejected():
    with pytest.raises(AudioFileError, match="WAV, FLAC or OGG"):
        decode_audio_file(wav_bytes(sine(300.0, 16000, 0.5), 16000, "AIFF", "PCM_16"))


def test_empty_or_bad_rate_files_are_rejected():
    with pytest.raises(EmptyAudioError):
        decode_audio_file(b"")
    with pytest.raises(EmptyAudioError):
        decode_audio_file(wav_bytes(np.zeros(0, np.float32), 16000))
    with pytest.raises(SampleRateError):
        decode_audio_file(wav_bytes(sine(300.0, 4000, 0.5), 4000))


def test_float_wav_with_nan_is_rejected():
    samples = sine(300.0, 16000, 0.2)
    samples[5] = np.nan
    with pytest.raises(NonFiniteAudioError):
        decode_audio_file(wav_bytes(samples, 16000, "WAV", "FLOAT"))


def test_full_scale_square_wave_is_valid_audio():
    square = np.where(sine(200.0, 48000, 1.0) >= 0, 32767, -32768).astype("<i2")
    samples = resample_to_model_rate(decode_pcm(square.tobytes(), "pcm16"), 48000)
    assert np.abs(samples).max() > 1.0  # resampling overshoots a clipped edge (Gibbs)
    feats = compute_fbank(samples)
    assert np.isfinite(feats).all() and feats.shape == (num_fbank_frames(len(samples)), 80)
    pcm = to_pcm16(samples)
    assert pcm.max() == 32767 and pcm.min() == -32768  # clipped, not wrapped


# --- fbank -----------------------------------------------------------------------------------------


def test_fbank_options_are_those_of_spec_3_1():
    opts = fbank_options()
    frame, mel = opts.frame_opts, opts.mel_opts
    assert (frame.samp_freq, frame.frame_length_ms, frame.frame_shift_ms) == (16000, 25, 10)
    assert frame.dither == 0.0 and frame.snip_edges and frame.remove_dc_offset and frame.round_to_power_of_two
    assert frame.window_type == "povey" and frame.preemph_coeff == pytest.approx(0.97)
    assert mel.num_bins == 80 and mel.low_freq == 20 and mel.high_freq == 0
    assert not opts.use_energy and opts.use_power and opts.use_log_fbank and opts.energy_floor == 0


def _kaldi_mel(freq: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + freq / 700.0)


def numpy_fbank_frame(samples: np.ndarray) -> np.ndarray:
    """One Kaldi fbank frame computed from the definition, in float64."""
    frame = samples[:400].astype(np.float64) * 32768.0
    frame = frame - frame.mean()
    frame[1:] = frame[1:] - 0.97 * frame[:-1]
    frame[0] -= 0.97 * frame[0]
    frame *= (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)) ** 0.85
    power = np.abs(np.fft.rfft(frame, 512)) ** 2
    mel_low, mel_high = _kaldi_mel(np.array(20.0)), _kaldi_mel(np.array(8000.0))
    delta = (mel_high - mel_low) / 81
    fft_mel = _kaldi_mel(np.arange(256) * 16000 / 512)
    energies = np.empty(80)
    for b in range(80):
        left, centre, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        up = (fft_mel - left) / (centre - left)
        down = (right - fft_mel) / (right - centre)
        weights = np.where((fft_mel > left) & (fft_mel < right), np.minimum(up, down), 0.0)
        energies[b] = weights @ power[:256]
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))


def test_fbank_frame_matches_the_kaldi_definition():
    samples = sine(440.0, 16000, 0.1, 0.3) + noise(0.1, 0.05)
    feats = compute_fbank(samples)
    np.testing.assert_allclose(feats[0], numpy_fbank_frame(samples), atol=2e-3)
    np.testing.assert_allclose(feats[3], numpy_fbank_frame(samples[3 * 160 :]), atol=2e-3)


@pytest.mark.parametrize(("num_samples", "frames"), [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (16000, 98)])
def test_fbank_frame_count_follows_snip_edges(num_samples, frames):
    assert num_fbank_frames(num_samples) == frames
    assert compute_fbank(noise(num_samples / 16000, 0.1)).shape == (frames, 80)


def test_fbank_is_deterministic_raw_log_mel():
    samples = noise(1.0, 0.1)
    first, second = compute_fbank(samples), compute_fbank(samples)
    np.testing.assert_array_equal(first, second)  # dither 0
    assert 5.0 < first.mean() < 25.0  # raw log-mel of int16-scaled audio: CMVN is not applied here


def test_incremental_fbank_is_bit_identical_to_one_shot():
    samples = noise(3.0, 0.1, seed=3)
    extractor = IncrementalFbank()
    sizes = np.random.default_rng(0).integers(1, 2000, size=100)
    pieces, begin = [], 0
    for size in sizes:
        pieces.append(extractor.accept(samples[begin : begin + size]))
        begin += size
    pieces.append(extractor.accept(samples[begin:]))
    np.testing.assert_array_equal(np.concatenate(pieces), compute_fbank(samples))

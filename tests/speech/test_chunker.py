"""Chunked codec decoding (docs/MODEL.md#chunking): windows, splice, exact length, agreement with one codec call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.speech.chunker import CodecChunker, CodecWindow, float_to_pcm16, low_energy_cut

HOP = 600


def _stream(codec, tokens: list[int], *, chunk_tokens: int, seg_threshold: float,
            max_hold_samples: int = 10**9) -> tuple[np.ndarray, list[int]]:
    """Feed tokens one by one, decoding each window as soon as it is issued."""
    chunker = CodecChunker(chunk_tokens=chunk_tokens, seg_threshold=seg_threshold, hop_length=HOP,
                           max_hold_samples=max_hold_samples)
    pieces: list[np.ndarray] = []

    def decode(window: CodecWindow | None) -> None:
        if window is None:
            return
        with torch.inference_mode():
            wave = codec(torch.from_numpy(window.tokens)[None])[0].numpy()
        pieces.extend(chunker.accept(window, wave))

    for token in tokens:
        decode(chunker.push(token))
    decode(chunker.finish())
    tail = chunker.flush_buffer()
    if tail is not None:
        pieces.append(tail)
    out = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return out, [p.size for p in pieces]


@pytest.mark.parametrize(
    ("count", "chunk_tokens", "threshold"),
    [(0, 20, 0.1), (7, 20, 0.1), (30, 20, 0.1), (63, 20, 0.1), (97, 40, 0.015)],
)
def test_chunked_output_equals_one_codec_call(tiny_models, count: int, chunk_tokens: int, threshold: float) -> None:
    tokens = torch.randint(0, 1024, (count,), generator=torch.Generator().manual_seed(count)).tolist()
    chunked, _ = _stream(tiny_models.codec, tokens, chunk_tokens=chunk_tokens, seg_threshold=threshold)
    assert chunked.shape == (HOP * count,)
    if count:
        with torch.inference_mode():
            whole = tiny_models.codec(torch.tensor([tokens]))[0].numpy()
        assert np.abs(chunked - whole).max() < 1e-4


def test_first_window_needs_chunk_plus_lookahead_then_context_chunk_lookahead(tiny_models) -> None:
    chunker = CodecChunker(chunk_tokens=20, seg_threshold=0.1, hop_length=HOP)
    issued = [(i, w) for i in range(75) if (w := chunker.push(i)) is not None]
    assert [i for i, _ in issued] == [29, 49, 69]  # 20 + 10 first, then 20 new tokens per window
    first, second = issued[0][1], issued[1][1]
    assert first.tokens.tolist() == list(range(30)) and (first.keep_start, first.keep_end) == (0, 20 * HOP)
    assert second.tokens.tolist() == list(range(10, 50))
    assert (second.keep_start, second.keep_end) == (10 * HOP, 30 * HOP)


def test_quiet_second_half_is_cut_and_loud_audio_is_held_back() -> None:
    rng = np.random.default_rng(0)
    loud = (rng.uniform(-0.5, 0.5, 24000)).astype(np.float32)
    assert low_energy_cut(loud, 2401, 0.1) is None
    quiet = loud.copy()
    quiet[16000:19000] *= 0.01
    cut = low_energy_cut(quiet, 2401, 0.1)
    assert cut is not None and 16000 <= cut < 19000
    assert low_energy_cut(quiet[:1000], 2401, 0.1) is None  # shorter than the box: no cut


def test_splice_holds_back_until_a_quiet_point(tiny_models) -> None:
    tokens = torch.randint(0, 1024, (55,), generator=torch.Generator().manual_seed(5)).tolist()
    out_never, sizes_never = _stream(tiny_models.codec, tokens, chunk_tokens=20, seg_threshold=0.0)
    assert sizes_never == [55 * HOP]  # threshold 0: nothing is quiet enough, everything comes at the end
    out_always, sizes_always = _stream(tiny_models.codec, tokens, chunk_tokens=20, seg_threshold=10.0)
    assert len(sizes_always) > 1
    np.testing.assert_array_equal(out_never, out_always)  # the splice only moves chunk boundaries


def test_audio_is_not_held_back_longer_than_the_hold_limit(tiny_models) -> None:
    tokens = torch.randint(0, 1024, (95,), generator=torch.Generator().manual_seed(6)).tolist()
    out_capped, sizes = _stream(tiny_models.codec, tokens, chunk_tokens=20, seg_threshold=0.0, max_hold_samples=24000)
    assert len(sizes) > 1 and all(size <= 24000 + 20 * HOP for size in sizes[:-1])
    out_held, _ = _stream(tiny_models.codec, tokens, chunk_tokens=20, seg_threshold=0.0)
    np.testing.assert_array_equal(out_capped, out_held)


def test_windows_must_be_accepted_in_order(tiny_models) -> None:
    chunker = CodecChunker(chunk_tokens=20, context_tokens=10, seg_threshold=0.1, hop_length=HOP)
    windows = [w for i in range(50) if (w := chunker.push(i)) is not None]
    with pytest.raises(RuntimeError):
        chunker.accept(windows[1], np.zeros(40 * HOP, dtype=np.float32))


def test_pcm16_conversion_clips_full_scale() -> None:
    pcm = float_to_pcm16(np.array([1.0, -1.0, 0.5, -0.00001], dtype=np.float32))
    assert pcm.dtype == np.int16
    assert pcm.tolist() == [32767, -32768, 16384, 0]

"""Chunked codec decoding (docs/MODEL.md#chunking): windows, splice, exact length, agreement with one codec call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.speech.chunker import (
    REFERENCE_WINDOWS,
    CodecChunker,
    CodecWindow,
    WindowSchedule,
    float_to_pcm16,
    low_energy_cut,
)

HOP = 600


def _stream(codec, tokens: list[int], *, chunk_tokens: int, seg_threshold: float,
            max_hold_samples: int = 10**9, schedule: WindowSchedule | None = None, first_segment: bool = False,
            hold: bool = True) -> tuple[np.ndarray, list[int]]:
    """Feed tokens one by one, decoding each window as soon as it is issued."""
    chunker = CodecChunker(chunk_tokens=chunk_tokens, seg_threshold=seg_threshold, hop_length=HOP,
                           max_hold_samples=max_hold_samples, schedule=schedule, first_segment=first_segment)
    pieces: list[np.ndarray] = []

    def decode(window: CodecWindow | None) -> None:
        if window is None:
            return
        with torch.inference_mode():
            wave = codec(torch.from_numpy(window.tokens)[None])[0].numpy()
        pieces.extend(chunker.accept(window, wave, hold=hold))

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


# ----- growing windows -----


def test_window_schedule_grows_with_the_audio_delivered_and_zero_growth_is_the_reference() -> None:
    grown = WindowSchedule(growth=0.5, max_chunk_tokens=80)
    assert [grown.chunk_tokens_at(d, True) for d in (0, 20, 40, 60, 90, 130, 200, 1000)] == [20, 20, 20, 30, 40, 60, 80, 80]
    assert grown.chunk_tokens_at(0, False) == 20  # a later segment of a stream with nothing delivered yet
    assert [REFERENCE_WINDOWS.chunk_tokens_at(d, first) for d, first in ((0, True), (500, True), (0, False), (500, False))] \
        == [20, 20, 40, 40]
    with pytest.raises(ValueError):
        WindowSchedule(growth=-1)


def test_growing_windows_keep_ten_tokens_of_context_on_both_sides() -> None:
    chunker = CodecChunker(chunk_tokens=20, seg_threshold=0.1, hop_length=HOP, schedule=WindowSchedule(growth=0.5),
                           first_segment=True)
    issued = [(i, w) for i in range(260) if (w := chunker.push(i)) is not None]
    kept = [((w.keep_end - w.keep_start) // HOP) for _, w in issued]
    assert kept == [20, 20, 20, 30, 40, 60]  # C = 0.5 x kept before it, at least 20, multiples of 10
    for (_, before), (_, window) in zip(issued, issued[1:]):
        assert window.keep_start == 10 * HOP and window.tokens.shape[0] * HOP - window.keep_end == 10 * HOP
        assert window.tokens[:20].tolist() == before.tokens[-20:].tolist()  # left context + previous look-ahead
    # A later segment starts from what the stream's earlier segments delivered.
    later = CodecChunker(chunk_tokens=40, seg_threshold=0.015, hop_length=HOP, schedule=WindowSchedule(growth=0.5),
                         stream_tokens_before=400)
    assert [i for i in range(120) if later.push(i) is not None] == [89]  # C = 80: 80 + 10 look-ahead


def _per_splice_errors(codec, tokens: list[int], schedule: WindowSchedule, first_segment: bool) -> list[float]:
    """max |chunked - one codec call| within the codec's receptive field (+-13 tokens) of each splice."""
    chunker = CodecChunker(chunk_tokens=40, seg_threshold=0.015, hop_length=HOP, schedule=schedule,
                           first_segment=first_segment)
    pieces, splices = [], []
    with torch.inference_mode():
        for window in [chunker.push(t) for t in tokens] + [chunker.finish()]:
            if window is not None:
                pieces.extend(chunker.accept(window, codec(torch.from_numpy(window.tokens)[None])[0].numpy(), hold=False))
                splices.append(sum(p.size for p in pieces) // HOP)
        whole = codec(torch.tensor([tokens]))[0].numpy()
    error = np.abs(np.concatenate(pieces) - whole)
    return [float(error[max(0, (at - 13) * HOP) : (at + 13) * HOP].max()) for at in splices[:-1]]


def test_growing_windows_differ_from_one_codec_call_no_more_than_the_reference(tiny_models) -> None:
    """The splice error (chunked vs one codec call over every token) comes from the codec's receptive field
    (+-13 tokens) reaching past the 10-token context. Growing windows keep that context on both sides, so
    the error at each splice is the reference's own; there are fewer splices per second."""
    reference, grown = [], []
    for seed in range(2):
        tokens = torch.randint(0, 1024, (240,), generator=torch.Generator().manual_seed(100 + seed)).tolist()
        for first in (True, False):
            reference += _per_splice_errors(tiny_models.codec, tokens, REFERENCE_WINDOWS, first)
        grown += _per_splice_errors(tiny_models.codec, tokens, WindowSchedule(growth=0.5), True)
    print(f"per-splice error: reference mean {np.mean(reference):.3g} max {max(reference):.3g} over {len(reference)}; "
          f"growing mean {np.mean(grown):.3g} max {max(grown):.3g} over {len(grown)}")
    assert 0 < np.mean(grown) <= 1.2 * np.mean(reference) and max(grown) <= max(reference)


def test_no_hold_emits_at_once_and_the_audio_is_the_same(tiny_models) -> None:
    tokens = torch.randint(0, 1024, (95,), generator=torch.Generator().manual_seed(7)).tolist()
    held, sizes_held = _stream(tiny_models.codec, tokens, chunk_tokens=20, seg_threshold=0.0)
    at_once, sizes = _stream(tiny_models.codec, tokens, chunk_tokens=20, seg_threshold=0.0, hold=False)
    assert sizes_held == [95 * HOP] and sizes == [20 * HOP] * 4 + [15 * HOP]
    np.testing.assert_array_equal(held, at_once)

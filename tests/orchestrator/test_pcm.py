"""Client audio framing: whole samples out of any cut, pieces the audio service takes, bad floats refused."""

from __future__ import annotations

import struct

import pytest

from services.orchestrator.pcm import PIECE_MS, PcmFramer, PcmRejected


def test_any_cut_gives_back_the_same_whole_samples():
    pcm = bytes(range(256)) * 10
    framer = PcmFramer("pcm16", 16000)
    out = b""
    for size in (1, 3, 1, 7, 2, 333):
        chunk, pcm_left = pcm[:size], pcm[size:]
        pieces = framer.feed(chunk)
        assert all(len(piece) % 2 == 0 for piece in pieces)
        out += b"".join(pieces)
        pcm = pcm_left
    out += b"".join(framer.feed(pcm))
    assert out == (bytes(range(256)) * 10) and framer.take_stray() == 0


def test_a_stray_byte_is_held_then_reported():
    framer = PcmFramer("f32", 16000)
    assert framer.feed(struct.pack("<f", 0.5) + b"\x00") == [struct.pack("<f", 0.5)]
    assert framer.take_stray() == 1 and framer.take_stray() == 0


def test_long_chunks_are_split_into_pieces_the_service_takes():
    framer = PcmFramer("pcm16", 16000)
    pieces = framer.feed(bytes(16000 * 2 * 3))  # 3 s in one chunk
    assert {len(piece) for piece in pieces} == {16000 * PIECE_MS // 1000 * 2} and len(pieces) == 30


@pytest.mark.parametrize("bad, words", [(float("nan"), "NaN"), (float("inf"), "NaN or infinity"), (300.0, "peaks at 300")])
def test_bad_floats_are_refused(bad, words):
    framer = PcmFramer("f32", 16000)
    with pytest.raises(PcmRejected, match=words):
        framer.feed(struct.pack("<3f", 0.0, bad, 0.1))
    assert framer.take_stray() == 0

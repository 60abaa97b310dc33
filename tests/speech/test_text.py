"""Segment normalisation before TTS (docs/MODEL.md#speech-input)."""

from __future__ import annotations

from services.speech.text import is_silent, normalize_segment


def test_removes_state_symbols_and_control_text_and_lowercases() -> None:
    assert normalize_segment("☞Hello <unk>World☜☟<|im_end|>", first_segment=False) == "hello world"


def test_does_not_verbalise_equations() -> None:
    text = "A single cost - x = y / 2"
    assert normalize_segment(text, first_segment=False) == text.lower()  # no " sine gle", no 减


def test_first_segment_commas_become_full_stops() -> None:
    assert normalize_segment("Yes, I can，sure.", first_segment=True) == "yes。 i can。sure."
    assert normalize_segment("Yes, I can.", first_segment=False) == "yes, i can."


def test_segment_with_nothing_to_say_is_silent() -> None:
    assert is_silent(normalize_segment("☞ <|im_end|>\n", first_segment=True))
    assert not is_silent(normalize_segment("☞ ok", first_segment=True))

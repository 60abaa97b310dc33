"""Per-segment text normalisation before TTS (docs/MODEL.md#speech-input)."""

from __future__ import annotations

from shared.tokenizer import IM_END, STATE_SYMBOLS

# Removed before synthesis, as the reference TTS worker does: state symbols and leftover control text.
REMOVED_MARKERS: tuple[str, ...] = (*STATE_SYMBOLS, "<unk>", IM_END)
FIRST_SEGMENT_COMMAS = (",", "，")
FULL_STOP = "。"


def normalize_segment(text: str, *, first_segment: bool) -> str:
    """Text as the TTS should read it; "" (or only whitespace) means: no audio for this segment.

    * Removes ☞ ☜ ☟, `<unk>` and `<|im_end|>`.
    * First segment of a reply: commas become "。", as the reference server does for its
      first-sentence segment (keeps our input identical to what the model heard in the demo).
    * Lower-cases, as the reference does.
    * Deliberately NOT the reference's `replace_equation`: its substring rules rewrite ordinary English
      ("single" → " sine gle", "cost" → " cosine t", "-" → 减; docs/MODEL.md#d-normaliser). Maths
      verbalisation, if wanted, belongs in a proper text normaliser, not in a substring table.
    """
    for marker in REMOVED_MARKERS:
        text = text.replace(marker, "")
    if first_segment:
        for comma in FIRST_SEGMENT_COMMAS:
            text = text.replace(comma, FULL_STOP)
    return text.lower()


def is_silent(normalized: str) -> bool:
    """A segment with nothing to say produces no audio (the reference skips it too)."""
    return normalized.strip() == ""

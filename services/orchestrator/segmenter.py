"""Cuts streamed reply text into speech segments while the LLM is still writing (docs/MODEL.md#segmenting).

The rule depends only on the text, never on how it was split into deltas, so the distributed stack and
the in-process run cut the same segments and, with a seed, speak identical audio.
"""

from __future__ import annotations

from shared.tokenizer import STATE_SYMBOLS

# The reference server's break characters.
BREAK_CHARS = frozenset(",，.。?？!！、\n")


def is_cjk(char: str) -> bool:
    code = ord(char)
    return (
        0x3040 <= code <= 0x30FF  # kana
        or 0x3400 <= code <= 0x4DBF  # CJK extension A
        or 0x4E00 <= code <= 0x9FFF  # CJK unified ideographs
        or 0xAC00 <= code <= 0xD7AF  # Hangul syllables
        or 0xF900 <= code <= 0xFAFF  # CJK compatibility ideographs
    )


class Segmenter:
    def __init__(self, first_max_chars: int, min_chars: int, max_chars: int):
        self._first_max_chars = first_max_chars
        self._min_chars = min_chars
        self._max_chars = max_chars
        self._buffer: list[str] = []
        self._emitted = 0

    def push(self, text: str) -> list[str]:
        """Adds reply text; returns the segments completed by it."""
        segments = []
        for char in text:
            if char in STATE_SYMBOLS:
                continue
            self._buffer.append(char)
            if self._should_cut(char):
                segment = self._take()
                if segment:
                    segments.append(segment)
        return segments

    def flush(self) -> list[str]:
        """The unpunctuated tail at the end of the reply: spoken too (the reference drops it)."""
        segment = self._take()
        return [segment] if segment else []

    def _should_cut(self, char: str) -> bool:
        length = len(self._buffer)
        first = self._emitted == 0
        if char in BREAK_CHARS:
            # The first segment ends at the first mark, however short: first audio starts early.
            return first or length >= self._min_chars
        limit = self._first_max_chars if first else self._max_chars
        # Past the limit, cut at a word boundary: a space, or after any CJK character (those scripts
        # write no spaces, and each character is a word-like unit); otherwise 20 characters later.
        return length >= limit and (char.isspace() or is_cjk(char) or length >= limit + 20)

    def _take(self) -> str:
        text = "".join(self._buffer).strip()
        self._buffer.clear()
        if text:
            self._emitted += 1
        return text

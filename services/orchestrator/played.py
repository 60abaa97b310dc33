"""Which part of a reply the user heard, from how much of its audio was played.

The reply is spoken segment by segment, in order, and each segment's audio is known: so a played
duration falls inside one segment. The segments before it were heard whole. Of the segment being played,
the heard share of its text is taken proportional to the heard share of its audio, then cut back to a
word boundary: speech runs roughly evenly through a clause, and a half-heard word was not heard. The
result is then cut back to whole text deltas, so that the kept text and the kept token ids match (the
next prompt replays those ids, and the LLM must see exactly what the user is told it said).
"""

from __future__ import annotations

from typing import Sequence

from services.orchestrator.pipeline import SpokenSegment
from services.orchestrator.segmenter import BREAK_CHARS, is_cjk


def heard_chars(reply_text: str, segments: Sequence[SpokenSegment], played_ms: float) -> int:
    """How many characters of `reply_text` (the visible reply) were heard after `played_ms` of audio."""
    rate = _ms_per_char(segments)
    heard, remaining, position = 0, played_ms, 0
    for segment in segments:
        start = reply_text.find(segment.text, position)
        if start < 0:
            break  # segments are cut from the reply text; stop rather than guess if one is not there
        position = start + len(segment.text)
        length = _length_ms(segment, rate)
        if segment.done and remaining > 0 and remaining >= length:
            heard, remaining = position, remaining - length
            continue
        if length > 0 and remaining > 0:
            words = word_prefix(segment.text, int(len(segment.text) * min(1.0, remaining / length)))
            heard = start + words if words else heard
        break
    return heard


def _ms_per_char(segments: Sequence[SpokenSegment]) -> float | None:
    done = [s for s in segments if s.done and s.audio_ms > 0]
    chars = sum(len(s.text) for s in done)
    return sum(s.audio_ms for s in done) / chars if chars else None


def _length_ms(segment: SpokenSegment, ms_per_char: float | None) -> float:
    """A segment's audio length. While it is still being synthesised only a lower bound is known: its
    text at the pace of the finished segments, if that is longer than what it produced so far."""
    if segment.done or ms_per_char is None:
        return segment.audio_ms
    return max(segment.audio_ms, ms_per_char * len(segment.text))


def word_prefix(text: str, chars: int) -> int:
    """The longest prefix of `text` of at most `chars` characters that ends at a word boundary: before a
    space or a punctuation mark, after a punctuation mark, or after a CJK character (those scripts write
    no spaces)."""
    if chars >= len(text):
        return len(text)
    for end in range(chars, 0, -1):
        after, before = text[end], text[end - 1]
        if after.isspace() or after in BREAK_CHARS or before in BREAK_CHARS or is_cjk(before):
            return end
    return 0


def keep_deltas(
    deltas: Sequence[tuple[str, tuple[int, ...]]], chars: int
) -> tuple[str, list[int]]:
    """The text deltas that fit whole in the first `chars` characters: their text and token ids. A
    delta without text (the state symbol that opens a reply) is kept when its place is reached."""
    text, ids, length = [], [], 0
    for piece, token_ids in deltas:
        if length + len(piece) > chars:
            break
        text.append(piece)
        ids.extend(token_ids)
        length += len(piece)
    return "".join(text), ids

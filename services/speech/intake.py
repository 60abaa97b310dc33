"""Turns a pushed text segment into a `PendingSegment`, on the caller's thread.

Normalisation and tokenisation take microseconds, so they run in `push_segment` itself: a bad segment
(out of order, too long for the TTS context) is refused synchronously, with an error the caller can act
on, instead of failing the stream later on the engine thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.speech.events import SegmentOrderError, SegmentTooLongError
from services.speech.streams import PendingSegment, StreamHandle
from services.speech.text import is_silent, normalize_segment
from services.speech.tts import max_codec_tokens_for
from shared.tokenizer import QwenTokenizer

# Length cap: 1 s of slack on top of the per-text-token budget (see tts.max_codec_tokens_for).
LENGTH_CAP_BASE_TOKENS = 40


@dataclass(frozen=True)
class LengthLimits:
    """A segment stops after min(max_codec_tokens, per_text_token · n_text + base_tokens) codec tokens,
    and its text frames, the start token and that many codec tokens must fit the TTS positions."""

    frames_per_text_token: int
    max_positions: int
    per_text_token: int
    base_tokens: int
    max_codec_tokens: int

    def codec_cap(self, text_tokens: int) -> int:
        return max_codec_tokens_for(
            text_tokens, per_text_token=self.per_text_token, base_tokens=self.base_tokens,
            hard_cap=self.max_codec_tokens,
        )

    def fits(self, text_tokens: int) -> bool:
        positions = self.frames_per_text_token * text_tokens + 1 + self.codec_cap(text_tokens)
        return positions <= self.max_positions

    def check(self, text_tokens: int) -> None:
        if self.fits(text_tokens):
            return
        limit = max((n for n in range(1, self.max_positions) if self.fits(n)), default=0)
        raise SegmentTooLongError(
            f"segment has {text_tokens} text tokens; at most {limit} fit the TTS context "
            f"({self.max_positions} positions): split the text at punctuation"
        )


class SegmentIntake:
    def __init__(self, tokenizer: QwenTokenizer, limits: LengthLimits) -> None:
        self._tokenizer = tokenizer
        self.limits = limits

    def prepare(self, handle: StreamHandle, text: str, segment_index: int, enqueued_ns: int) -> PendingSegment:
        """Validates and tokenises one segment and records it on the handle (the caller holds the lock
        that guards it)."""
        if segment_index <= handle.last_segment_index:
            raise SegmentOrderError(
                f"segment_index {segment_index} must exceed the previous one ({handle.last_segment_index})"
            )
        first = handle.spoken_segments == 0
        normalized = normalize_segment(text, first_segment=first)
        text_ids = [] if is_silent(normalized) else self._tokenizer.encode_text(normalized)
        if text_ids:
            self.limits.check(len(text_ids))
            handle.spoken_segments += 1
        handle.last_segment_index = segment_index
        max_tokens = self.limits.codec_cap(len(text_ids)) if text_ids else 0
        return PendingSegment(segment_index, text_ids, first and bool(text_ids), enqueued_ns, max_tokens)

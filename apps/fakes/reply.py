"""The fake LLM's reply: real tokens of the served tokenizer, so that text, ids and the speech segments the
orchestrator cuts from them are what a real reply produces.

The reply opens with the text-reply state symbol (as VITA-1.5 does) in the same delta as its first word,
and its first speech segment closes with the comma of the second token: the capacity harness computes a
turn's expected time to first audio from that (`FIRST_SEGMENT_TOKENS`).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.tokenizer import QwenTokenizer

# Short sentences of plain English words: one BPE token per word or mark.
REPLY_TEXT = (
    "Sure, here is what I think. The sea is deep and the sky is wide, and every wave has a story to tell. "
    "Some days are calm and some are wild, but the tide always comes back. "
)
# Tokens up to and including the one that ends the first speech segment ("Sure" then ",").
FIRST_SEGMENT_TOKENS = 2


@dataclass(frozen=True)
class ReplyTokens:
    """`pieces[i]`: token id and its text; `state_id` opens the reply, `stop_id` ends it."""

    pieces: tuple[tuple[int, str], ...]
    state_id: int
    stop_id: int

    @classmethod
    def build(cls, tokenizer: QwenTokenizer) -> "ReplyTokens":
        pieces = tuple((token_id, tokenizer.decode([token_id])) for token_id in tokenizer.encode_text(REPLY_TEXT))
        if "".join(text for _, text in pieces[:FIRST_SEGMENT_TOKENS]) != "Sure,":
            raise AssertionError("the fake reply's first segment is no longer 'Sure,': update FIRST_SEGMENT_TOKENS")
        return cls(pieces, tokenizer.special.state_text_reply, tokenizer.special.im_end)

    def piece(self, index: int) -> tuple[int, str]:
        """The reply's `index`-th token; the text repeats for replies longer than it."""
        return self.pieces[index % len(self.pieces)]

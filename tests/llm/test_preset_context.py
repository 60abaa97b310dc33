"""Every preset's context holds the longest visual input the model's rules produce, with a question, the
default reply and history beside it (a 60 s video is 16 frames × 256 rows: over a 4096-token context)."""

from __future__ import annotations

import pytest

from services.orchestrator.backends import MediaPiece
from services.orchestrator.prompt import PromptBuilder, UserMessage
from services.orchestrator.records import TurnRecord
from services.vision.images import MAX_TILES_LIMIT
from services.vision.video import MAX_FRAMES
from shared.presets import LONGEST_VISUAL_TILES, PRESETS, VISUAL_INPUT_HEADROOM_TOKENS
from shared.session_settings import SessionSettings
from shared.tokenizer import QwenTokenizer


def test_the_longest_visual_input_is_what_the_vision_rules_produce():
    assert LONGEST_VISUAL_TILES == max(MAX_FRAMES, MAX_TILES_LIMIT + 1)  # 12 tiles + the thumbnail


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_longest_visual_turn_fits_with_a_question_a_reply_and_history(name):
    preset = PRESETS[name]
    visual_rows = LONGEST_VISUAL_TILES * preset.vision.tokens_per_tile
    assert visual_rows + VISUAL_INPUT_HEADROOM_TOKENS <= preset.max_context_tokens <= preset.llm.max_position_embeddings

    builder = PromptBuilder(QwenTokenizer.from_dir())
    question = "What happens in this video, and what does the person say at the end? " * 6
    earlier = TurnRecord(turn_id="t0", started_unix_ms=0, user_text="Hello there, who are you? " * 10,
                         reply_token_ids=list(range(1000, 1300)))
    reply = SessionSettings().max_reply_tokens
    prompt, length = builder.build(
        [earlier], UserMessage(text=question, visual=[("video", MediaPiece("clip", visual_rows))]),
        max_context_tokens=preset.max_context_tokens, reply_reserve_tokens=reply, max_history_turns=8,
    )
    assert length + reply <= preset.max_context_tokens
    assert any(isinstance(p, MediaPiece) for p in prompt) and length > visual_rows + 300  # the history turn is kept

"""The VITA-1.5 prompt (docs/MODEL.md#prompt, `conv_qwen2p5_instruct`), as token pieces and media spans.

User text is tokenised as plain text: `<|im_start|>`, `<image>` or ☞ typed by a user can
never change the prompt's structure. Media are spliced as embedding spans at their placeholders' place
(docs/MODEL.md#prompt): images and video first, then "\n", the text, then the audio clip.

Decision on the system prompt: the reference picks it by the current request's modality. Changing it
mid-conversation would invalidate the whole KV-cache prefix, so a session keeps the prompt of the most
visual modality it has used so far (text/audio → image → video) and changes it at most twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.orchestrator.backends import MediaPiece, PromptPiece, TokenPiece
from services.orchestrator.records import TurnRecord
from shared.tokenizer import IM_END, IM_START, QwenTokenizer

# The system prompts VITA-1.5 was trained with (vita/conversation.py, conv_qwen2p5_instruct).
SYSTEM_LANG = (
    "You are an AI robot and your name is VITA. \n- You are a multimodal large language model developed by the "
    "open source community. Your aim is to be helpful, honest and harmless. \n- You support the ability to "
    "communicate fluently and answer user questions in multiple languages of the user's choice. \n- If the user "
    "corrects the wrong answer you generated, you will apologize and discuss the correct answer with the user."
)
SYSTEM_IMAGE = SYSTEM_LANG + (
    " \n- You must answer the question strictly according to the content of the image given by the user, and it "
    "is strictly forbidden to answer the question without the content of the image. Please note that you are "
    "seeing the image, not the video."
)
SYSTEM_VIDEO = SYSTEM_LANG + (
    " \n- You must answer the question strictly according to the content of the video given by the user, and it "
    "is strictly forbidden to answer the question without the content of the video. Please note that you are "
    "seeing the video, not the image."
)
SYSTEM_BY_MODALITY = {"lang": SYSTEM_LANG, "image": SYSTEM_IMAGE, "video": SYSTEM_VIDEO}
_VISUAL_RANK = {"lang": 0, "image": 1, "video": 2}


class PromptTooLong(ValueError):
    pass


@dataclass
class UserMessage:
    """The new user turn: text plus media spans (rows present) in prompt order."""

    text: str
    visual: list[tuple[str, MediaPiece]] = field(default_factory=list)  # ("image" | "video", span)
    audio: MediaPiece | None = None


def session_modality(history: list[TurnRecord], current: UserMessage | None = None) -> str:
    kinds = [ref.kind for turn in history for ref in turn.media]
    if current is not None:
        kinds += [kind for kind, _ in current.visual]
    modality = "lang"
    for kind in kinds:
        if kind in _VISUAL_RANK and _VISUAL_RANK[kind] > _VISUAL_RANK[modality]:
            modality = kind
    return modality


class PromptBuilder:
    def __init__(self, tokenizer: QwenTokenizer):
        self._tokenizer = tokenizer
        self._newline = tuple(tokenizer.encode_template("\n"))
        self._user_open = tuple(tokenizer.encode_template(f"{IM_START}user\n"))
        self._turn_close = tuple(tokenizer.encode_template(f"{IM_END}\n{IM_START}assistant\n"))
        self._reply_close = tuple(tokenizer.encode_template(f"{IM_END}\n"))
        self._system = {
            name: tuple(tokenizer.encode_template(f"{IM_START}system\n{text}{IM_END}\n"))
            for name, text in SYSTEM_BY_MODALITY.items()
        }

    def build(
        self,
        history: list[TurnRecord],
        current: UserMessage,
        *,
        max_context_tokens: int,
        reply_reserve_tokens: int,
        max_history_turns: int,
    ) -> tuple[list[PromptPiece], int]:
        """Returns the prompt pieces and their length in tokens. Oldest turns are left out until the
        prompt plus `reply_reserve_tokens` fits; if the new turn alone does not fit, PromptTooLong."""
        modality = session_modality(history, current)
        system = self._system[modality]
        current_pieces = self._user_pieces(current.text, current.visual, current.audio)
        fixed = len(system) + _length(current_pieces)
        budget = max_context_tokens - reply_reserve_tokens
        if fixed > budget:
            raise PromptTooLong(
                f"the message is {fixed - len(system)} tokens; with the system prompt and room for a reply of "
                f"{reply_reserve_tokens} tokens it exceeds this model's context limit of {max_context_tokens} tokens"
            )
        kept: list[list[PromptPiece]] = []
        used = fixed
        for turn in reversed(history[history_window_start(len(history), max_history_turns):]):
            if turn.outcome == "failed":
                continue
            pieces = self._history_pieces(turn)
            if used + _length(pieces) > budget:
                break
            kept.append(pieces)
            used += _length(pieces)
        prompt: list[PromptPiece] = [TokenPiece(system)]
        for pieces in reversed(kept):
            prompt.extend(pieces)
        prompt.extend(current_pieces)
        return _merge_tokens(prompt), used

    def _user_pieces(self, text: str, visual: list[tuple[str, MediaPiece]], audio: MediaPiece | None) -> list[PromptPiece]:
        pieces: list[PromptPiece] = [TokenPiece(self._user_open)]
        for _, span in visual:
            pieces.append(span)
        if visual:
            pieces.append(TokenPiece(self._newline))
        if text:
            pieces.append(TokenPiece(tuple(self._tokenizer.encode_text(text))))
        if audio is not None:
            pieces.append(audio)
        pieces.append(TokenPiece(self._turn_close))
        return pieces

    def _history_pieces(self, turn: TurnRecord) -> list[PromptPiece]:
        visual = [
            (ref.kind, MediaPiece(ref.content_id, ref.num_rows)) for ref in turn.media if ref.kind in ("image", "video")
        ]
        audio_refs = [ref for ref in turn.media if ref.kind == "audio"]
        audio = MediaPiece(audio_refs[0].content_id, audio_refs[0].num_rows) if audio_refs else None
        pieces = self._user_pieces(turn.user_text, visual, audio)
        pieces.append(TokenPiece(tuple(turn.reply_token_ids) + self._reply_close))
        return pieces


def history_window_start(turns: int, max_turns: int) -> int:
    """Index of the first stored turn the prompt may keep (then the token budget may drop more).

    Why not simply the last `max_turns`: dropping the oldest turn on every new turn changes the prompt's
    prefix every time, so once the window is full the LLM's session KV cache never matches and every turn
    re-prefills the whole history (measured with `vita bench`: 2.6k tokens, +250 ms to first audio, for
    300-token replies). The start moves in steps of half the window instead: the prompt keeps between
    max_turns // 2 + 1 and max_turns turns, and its prefix (hence the cache) holds for that many turns."""
    if max_turns <= 0:
        return turns
    excess = turns - max_turns
    if excess <= 0:
        return 0
    step = max(1, max_turns // 2)
    return -(-excess // step) * step


def _length(pieces: list[PromptPiece]) -> int:
    return sum(len(p.ids) if isinstance(p, TokenPiece) else p.num_rows for p in pieces)


def _merge_tokens(pieces: list[PromptPiece]) -> list[PromptPiece]:
    merged: list[PromptPiece] = []
    for piece in pieces:
        if isinstance(piece, TokenPiece) and merged and isinstance(merged[-1], TokenPiece):
            merged[-1] = TokenPiece(merged[-1].ids + piece.ids)
        else:
            merged.append(piece)
    return merged

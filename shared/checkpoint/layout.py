"""Where the pieces of an official VITA-1.5 checkpoint are, given the one directory an operator names.

`VITA_CHECKPOINT=DIR` (or `--checkpoint DIR`) is the VITA-1.5 directory: `config.json`, tokenizer files,
safetensors shards + index. The other pieces are found from it (docs/CHECKPOINTS.md shows the tree):

* TTS: `DIR/vita_tts_ckpt/` (the path the reference server opens), else `DIR/../vita_tts_ckpt/`.
* InternViT (its `config.json`) and the audio encoder (`train.yaml`, `global_cmvn`, `final.pt`): the path in
  `config.json` (`mm_vision_tower` / `mm_audio_encoder`) when it is an existing local directory (relative
  paths are taken from DIR); otherwise a directory named like its last path component (`OpenGVLab/InternViT-
  300M-448px` and `/mnt/.../InternViT-300M-448px` both give `InternViT-300M-448px`) or the conventional
  release name, looked up inside DIR, then beside DIR.

Nothing is downloaded: a piece that is not found is a `CheckpointError` that lists every place tried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.checkpoint.errors import CheckpointError
from shared.checkpoint.files import read_json

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
TTS_DIR = "vita_tts_ckpt"
TTS_DECODER_DIR = "decoder"
TTS_CODEC_DIR = "codec"
TTS_CONFIG_FILE = "model.json"
TTS_WEIGHTS_FILE = "final.pt"
AUDIO_CONFIG_FILE = "train.yaml"
AUDIO_CMVN_FILE = "global_cmvn"
AUDIO_WEIGHTS_FILE = "final.pt"
VISION_CONFIG_FILE = "config.json"

VISION_TOWER_KEY = "mm_vision_tower"
AUDIO_ENCODER_KEY = "mm_audio_encoder"
# Names of the released directories (HF OpenGVLab/InternViT-300M-448px; the audio encoder inside
# VITA-MLLM/VITA-1.5), tried when config.json points somewhere that does not exist here.
VISION_DIR_NAMES = ("InternViT-300M-448px",)
AUDIO_DIR_NAMES = ("audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning",)

# Key prefixes of the VITA safetensors (docs/MODEL.md#checkpoints).
VISION_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."
AUDIO_PREFIX = "model.audio_encoder."
LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
EMBED_TOKENS_KEY = "model.embed_tokens.weight"


def shard_owner(key: str) -> str | None:
    """Which service consumes a key of the VITA safetensors ("llm", "vision", "audio"), None if unknown."""
    if key.startswith(LLM_PREFIXES):
        return "llm"
    if key.startswith((VISION_PREFIX, PROJECTOR_PREFIX)):
        return "vision"
    if key.startswith(AUDIO_PREFIX):
        return "audio"
    return None


def is_derived_buffer(key: str) -> bool:
    """Buffers some library versions save but that are recomputed from the config (RoPE frequencies)."""
    return key.endswith(".inv_freq")


def vita_config(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise CheckpointError(root, None, "checkpoint directory not found")
    config = read_json(root / CONFIG_FILE)
    if not isinstance(config, dict):
        raise CheckpointError(root / CONFIG_FILE, None, "expected a JSON object")
    return config


def tokenizer_files(root: Path) -> tuple[Path, ...]:
    """The tokenizer files the services load: tokenizer.json, else vocab.json + merges.txt +
    tokenizer_config.json (the slow form that Qwen2 releases also carry)."""
    from shared.tokenizer import tokenizer_files as find_files

    try:
        return find_files(root)
    except FileNotFoundError:
        raise CheckpointError(
            root / TOKENIZER_FILE, None,
            "tokenizer not found (the tokenizer comes from the checkpoint): needs tokenizer.json, or vocab.json + "
            "merges.txt + tokenizer_config.json",
        ) from None


def tts_dir(root: Path) -> Path:
    tried = [root / TTS_DIR, root.parent / TTS_DIR]
    for candidate in tried:
        if candidate.is_dir():
            return candidate
    raise CheckpointError(root, TTS_DIR, f"TTS directory not found; tried {', '.join(map(str, tried))}")


def _find_component(root: Path, config: dict[str, Any], key: str, conventional: tuple[str, ...], marker: str) -> Path:
    value = config.get(key)
    names: list[str] = []
    tried: list[Path] = []
    if isinstance(value, str) and value.strip():
        direct = Path(value).expanduser()
        tried.append(direct if direct.is_absolute() else root / direct)
        names.append(Path(value.rstrip("/")).name)
    names.extend(name for name in conventional if name not in names)
    for name in names:
        tried.extend([root / name, root.parent / name])
    for candidate in tried:
        if (candidate / marker).is_file():
            return candidate
    shown = ", ".join(dict.fromkeys(str(path) for path in tried))
    raise CheckpointError(root / CONFIG_FILE, key, f"is {value!r}; no directory with {marker} found; tried {shown}")


def vision_dir(root: Path, config: dict[str, Any]) -> Path:
    return _find_component(root, config, VISION_TOWER_KEY, VISION_DIR_NAMES, VISION_CONFIG_FILE)


def audio_dir(root: Path, config: dict[str, Any]) -> Path:
    return _find_component(root, config, AUDIO_ENCODER_KEY, AUDIO_DIR_NAMES, AUDIO_CONFIG_FILE)


def checkpoint_tokenizer(root: Path, embedding_rows: int | None = None):
    """The checkpoint's own tokenizer, in either form (`tokenizer_files`); every id it can produce must have
    an embedding row. The services load it with this function, and `vita checkpoint inspect` checks with it."""
    from shared.tokenizer import QwenTokenizer, load_tokenizer

    root = Path(root)
    files = tokenizer_files(root)
    path, what = (files[0], "is") if len(files) == 1 else (root, f"{' + '.join(f.name for f in files)} are")
    try:
        tokenizer = QwenTokenizer(load_tokenizer(root))
    except Exception as err:  # tokenizers raises its own Exception type for unreadable files
        raise CheckpointError(path, None, f"{what} not a usable Qwen tokenizer ({err})") from None
    if embedding_rows is not None and tokenizer.vocab_size > embedding_rows:
        raise CheckpointError(
            path, None, f"has {tokenizer.vocab_size} tokens but the embedding table has {embedding_rows} rows"
        )
    return tokenizer

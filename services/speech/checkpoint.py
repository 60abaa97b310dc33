"""The speech models from the official VITA-1.5 directory (docs/MODEL.md#speech, docs/CHECKPOINTS.md).

* LLM input-embedding table: `model.embed_tokens.weight`, the one tensor read from the VITA safetensors,
  memory-mapped from the one shard that holds it (rows are paged in when a segment looks them up; the
  stored bf16 values widen exactly to the fp32 rows the reference uses).
* TTS decoder: `vita_tts_ckpt/decoder/model.json` ([idim, odim, args]) + `final.pt` (a state dict, or
  `{'model': state_dict}`). `layers_prefix.*` is known-unused: VITA always passes prefix=None.
* Codec: `vita_tts_ckpt/codec/model.json` + `final.pt` with sub-dicts `generator` (weight-norm form,
  folded here) and `quantizer`; the analysis-side `encoder` (and training leftovers) are known-unused.
  The codebook widths come from the codebook tensors: model.json has no key for them (the reference
  hard-codes 512 and 128).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from services.speech.codec import TiCodecDecoder, fold_weight_norm
from services.speech.tts import TTSDecoder
from shared.checkpoint.dims import codec_dims, llm_dims, tts_dims
from shared.checkpoint.errors import CheckpointError
from shared.checkpoint.files import ShardedSafetensors, flatten_state_dict, load_pt, read_json
from shared.checkpoint.layout import (
    CONFIG_FILE, EMBED_TOKENS_KEY, TTS_CODEC_DIR, TTS_CONFIG_FILE, TTS_DECODER_DIR, TTS_WEIGHTS_FILE,
    is_derived_buffer, tts_dir, vita_config,
)
from shared.checkpoint.strict import (
    ServicePlan, check_index_keys, check_tensors, finish, load_into, materialize, module_shapes,
    non_persistent_buffers, on_meta, tensor_infos,
)
from shared.presets import CodecDims, TTSDims

CODEC_REQUIRED = ("generator", "quantizer")
# Entries of codec/final.pt that synthesis never uses: the analysis encoder (loaded but unused by the
# reference) and what a HiFiGAN-style training checkpoint may carry besides.
CODEC_KNOWN_UNUSED = ("encoder", "mpd", "msd", "optim_g", "optim_d", "steps", "epoch")
LOCAL_CODEBOOK = "quantizer.quantizer_modules.0.embedding.weight"
GLOBAL_CODEBOOK = "quantizer.quantizer_modules_globaltokens.{index}.embedding.weight"


def _tts_without_prefix(dims) -> TTSDecoder:
    model = TTSDecoder(dims)
    model.layers_prefix = nn.ModuleList()  # never run (prefix is None in VITA, docs/MODEL.md#tts): not loaded
    return model


def _embed(root: Path, config: dict, config_path: Path):
    llm = llm_dims(config, config_path)
    shards = ShardedSafetensors(root)
    check_index_keys(shards)
    if EMBED_TOKENS_KEY not in shards.weight_map:
        raise CheckpointError(shards.index_path, EMBED_TOKENS_KEY, "missing")
    found = shards.infos([EMBED_TOKENS_KEY])
    check_tensors(found, {EMBED_TOKENS_KEY: (llm.vocab_size, llm.hidden_size)}, missing_in=shards.index_path,
                  shapes_from=str(config_path))
    return llm, shards, found[EMBED_TOKENS_KEY]


def _decoder(tts_root: Path, llm_hidden: int):
    config_path = tts_root / TTS_DECODER_DIR / TTS_CONFIG_FILE
    weights = tts_root / TTS_DECODER_DIR / TTS_WEIGHTS_FILE
    dims = tts_dims(read_json(config_path), config_path, llm_hidden)
    state = load_pt(weights)
    if isinstance(state.get("model"), dict):
        state = state["model"]
    tensors = flatten_state_dict(weights, state)
    skeleton = on_meta(lambda: _tts_without_prefix(dims), config_path)
    found = tensor_infos(weights, tensors)
    unused = check_tensors(
        found, module_shapes(skeleton), missing_in=weights, shapes_from=str(config_path),
        unused=lambda key: key.startswith("layers_prefix.") or is_derived_buffer(key),
    )
    return dims, skeleton, tensors, found, unused, [config_path, weights]


def tts_expected_shapes(dims: TTSDims) -> dict[str, tuple[int, ...]]:
    """decoder/final.pt key -> shape the runtime decoder needs (`layers_prefix` is known-unused)."""
    return module_shapes(on_meta(lambda: _tts_without_prefix(dims), Path(TTS_CONFIG_FILE)))


def codec_expected_shapes(dims: CodecDims) -> dict[str, tuple[int, ...]]:
    """codec/final.pt key (`generator.*` / `quantizer.*`) -> shape the runtime codec needs."""
    return _codec_expected(on_meta(lambda: TiCodecDecoder(dims), Path(TTS_CONFIG_FILE)))


def _codec_expected(skeleton: TiCodecDecoder) -> dict[str, tuple[int, ...]]:
    """Checkpoint keys: every generator conv weight is stored as weight_g [dim0, 1, …] + weight_v."""
    expected = {}
    for name, shape in module_shapes(skeleton).items():
        if name.startswith("generator.") and name.endswith(".weight"):
            stem = name[: -len(".weight")]
            expected[f"{stem}.weight_g"] = (shape[0],) + (1,) * (len(shape) - 1)
            expected[f"{stem}.weight_v"] = shape
        else:
            expected[name] = shape
    return expected


def _codebook_width(weights: Path, tensors: dict[str, torch.Tensor], key: str) -> int:
    tensor = tensors.get(key)
    if tensor is None:
        raise CheckpointError(weights, key, "missing")
    if tensor.dim() != 2:
        raise CheckpointError(weights, key, f"has shape {list(tensor.shape)}, expected [n_codes, width]")
    return int(tensor.shape[1])


def _codec(tts_root: Path):
    config_path = tts_root / TTS_CODEC_DIR / TTS_CONFIG_FILE
    weights = tts_root / TTS_CODEC_DIR / TTS_WEIGHTS_FILE
    config = read_json(config_path)
    checkpoint = load_pt(weights)
    for entry in CODEC_REQUIRED:
        if not isinstance(checkpoint.get(entry), dict):
            raise CheckpointError(weights, entry, "missing: the codec needs its generator and quantizer state dicts")
    tensors: dict[str, torch.Tensor] = {}
    unused_tensors: dict[str, torch.Tensor] = {}
    for entry, value in checkpoint.items():
        if entry in CODEC_REQUIRED:
            tensors.update(flatten_state_dict(weights, value, f"{entry}."))
        elif entry not in CODEC_KNOWN_UNUSED:
            raise CheckpointError(weights, entry, f"unexpected entry (expected {', '.join(CODEC_REQUIRED + CODEC_KNOWN_UNUSED)})")
        elif isinstance(value, dict):
            unused_tensors.update(flatten_state_dict(weights, value, f"{entry}."))
    codebook_dim = _codebook_width(weights, tensors, LOCAL_CODEBOOK)
    global_dim, index = 0, 0
    while GLOBAL_CODEBOOK.format(index=index) in tensors:
        global_dim += _codebook_width(weights, tensors, GLOBAL_CODEBOOK.format(index=index))
        index += 1
    dims = codec_dims(config, config_path, codebook_dim, global_dim)
    skeleton = on_meta(lambda: TiCodecDecoder(dims), config_path)
    found = tensor_infos(weights, tensors)
    check_tensors(found, _codec_expected(skeleton), missing_in=weights, shapes_from=f"{config_path} and the codebook widths")
    return dims, skeleton, tensors, found, list(tensor_infos(weights, unused_tensors).values()), [config_path, weights]


def _plan(root: Path):
    config_path = root / CONFIG_FILE
    config = vita_config(root)
    llm, shards, embed_info = _embed(root, config, config_path)
    tts_root = tts_dir(root)
    tts, tts_skeleton, tts_tensors, tts_found, tts_unused, tts_files = _decoder(tts_root, llm.hidden_size)
    codec, codec_skeleton, codec_tensors, codec_found, codec_unused, codec_files = _codec(tts_root)
    if tts.codec_vocab != codec.n_codes:
        raise CheckpointError(tts_files[0], "odim", f"is {tts.codec_vocab}, but the codec has n_codes {codec.n_codes}")
    plan = ServicePlan(
        service="speech",
        dims={"llm_embedding": llm, "tts": tts, "codec": codec},
        files=[config_path, shards.index_path, embed_info.path, *tts_files, *codec_files],
        consumed=[embed_info, *tts_found.values(), *codec_found.values()],
        unused=[*tts_unused, *codec_unused],
    )
    parts = dict(shards=shards, tts=(tts_skeleton, tts_tensors, tts_files[1]), codec=(codec_skeleton, codec_tensors, codec_files[1]))
    return plan, parts


def check_speech_checkpoint(root: Path) -> ServicePlan:
    return _plan(Path(root))[0]


def load_speech_checkpoint(root: Path, *, device: torch.device | str, dtype: torch.dtype):
    """(embedding table [vocab, llm_hidden] on the CPU, TTS decoder in `dtype`, codec in fp32)."""
    plan, parts = _plan(Path(root))
    embed_table = parts["shards"].memory_map(EMBED_TOKENS_KEY)
    tts_skeleton, tts_tensors, tts_weights = parts["tts"]
    codec_skeleton, codec_tensors, codec_weights = parts["codec"]
    for skeleton in (tts_skeleton, codec_skeleton):
        if non_persistent_buffers(skeleton):
            raise CheckpointError(root, None, f"speech buffers no checkpoint holds: {sorted(non_persistent_buffers(skeleton))}")
    tts = materialize(tts_skeleton, device=device, dtype=dtype)
    load_into(tts, ((name, tts_tensors[name]) for name in module_shapes(tts)), source=tts_weights)
    codec = materialize(codec_skeleton, device=device, dtype=torch.float32)
    load_into(codec, fold_weight_norm(codec_tensors).items(), source=codec_weights)
    return embed_table, finish(tts), finish(codec)

"""Model dimensions from a checkpoint's own config files (docs/CHECKPOINTS.md), as the `shared.presets` dataclasses.

Every reader checks that the architecture the file describes is the one this server implements (e.g.
InternViT with LayerNorm, a rel-enc Whale encoder, a LayerNorm adapter, one codec codebook) and fails with
the file and key otherwise. Values that are not in any config file are the architecture's constants
(RoPE base and RMSNorm eps of the TTS Llama layers, the ×0.5 pixel shuffle, 5000 relative positions).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.checkpoint.errors import CheckpointError
from shared.presets import AudioEncoderDims, CodecDims, LLMDims, TTSDims, VisionDims

PIXEL_SHUFFLE_RATIO = 0.5  # internvit_encoder.py pixel_shuffle(scale_factor=0.5): not a config key
TTS_FRAMES_PER_TEXT_TOKEN = 4


def _get(config: Mapping[str, Any], key: str, path: Path, kind: type | tuple[type, ...] = int, default: Any = ...):
    if key not in config:
        if default is ...:
            raise CheckpointError(path, key, "missing")
        return default
    value = config[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise CheckpointError(path, key, f"is {value!r}, expected {' or '.join(k.__name__ for k in kinds)}")
    if kind is int and value <= 0:
        raise CheckpointError(path, key, f"is {value}, expected a positive integer")
    return value


def _expect(config: Mapping[str, Any], key: str, path: Path, allowed: tuple[Any, ...], default: Any = ...) -> Any:
    """A value that selects an architecture; `default` is what the reference code assumes when unset."""
    value = config.get(key, default)
    if value is ...:
        raise CheckpointError(path, key, "missing")
    if value not in allowed:
        shown = f"is {value!r}" if key in config else f"is not set, so the reference uses {value!r}"
        raise CheckpointError(path, key, f"{shown}; this server implements {' or '.join(map(repr, allowed))}")
    return value


def llm_dims(config: Mapping[str, Any], path: Path) -> LLMDims:
    hidden = _get(config, "hidden_size", path)
    heads = _get(config, "num_attention_heads", path)
    head_dim = _get(config, "head_dim", path, default=None) or hidden // heads
    if hidden % heads and "head_dim" not in config:
        raise CheckpointError(path, "hidden_size", f"{hidden} is not divisible by num_attention_heads {heads}")
    kv_heads = _get(config, "num_key_value_heads", path, default=heads)
    if heads % kv_heads:
        raise CheckpointError(path, "num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}")
    if config.get("tie_word_embeddings", False):
        raise CheckpointError(path, "tie_word_embeddings", "is true; VITA-1.5 has a separate lm_head")
    if config.get("use_sliding_window", False):
        raise CheckpointError(path, "use_sliding_window", "is true; this server implements full attention")
    if config.get("rope_scaling"):
        raise CheckpointError(path, "rope_scaling", "is set; this server implements plain RoPE")
    _expect(config, "hidden_act", path, ("silu",), default="silu")
    return LLMDims(
        vocab_size=_get(config, "vocab_size", path),
        hidden_size=hidden,
        intermediate_size=_get(config, "intermediate_size", path),
        num_layers=_get(config, "num_hidden_layers", path),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=float(_get(config, "rope_theta", path, (int, float), default=1_000_000.0)),
        rms_norm_eps=float(_get(config, "rms_norm_eps", path, (int, float), default=1e-6)),
        max_position_embeddings=_get(config, "max_position_embeddings", path, default=32768),
    )


def vision_dims(vit: Mapping[str, Any], vit_path: Path, vita: Mapping[str, Any], vita_path: Path) -> VisionDims:
    if isinstance(vit.get("vision_config"), Mapping):  # an InternVL-style wrapper config
        vit = vit["vision_config"]
    _expect(vit, "norm_type", vit_path, ("layer_norm",), default="rms_norm")
    _expect(vit, "qk_normalization", vit_path, (False,), default=False)
    _expect(vit, "qkv_bias", vit_path, (True,), default=True)
    _expect(vit, "hidden_act", vit_path, ("gelu",), default="gelu")
    _expect(vit, "num_channels", vit_path, (3,), default=3)
    _expect(vita, "mm_projector_type", vita_path, ("mlp2x_gelu",), default="mlp2x_gelu")
    dims = VisionDims(
        image_size=_get(vit, "image_size", vit_path),
        patch_size=_get(vit, "patch_size", vit_path),
        hidden_size=_get(vit, "hidden_size", vit_path),
        intermediate_size=_get(vit, "intermediate_size", vit_path),
        num_layers=_get(vit, "num_hidden_layers", vit_path),
        num_heads=_get(vit, "num_attention_heads", vit_path),
        llm_hidden=_get(vita, "hidden_size", vita_path),
        layer_norm_eps=float(_get(vit, "layer_norm_eps", vit_path, (int, float), default=1e-6)),
        downsample_ratio=PIXEL_SHUFFLE_RATIO,
    )
    mm_hidden = vita.get("mm_hidden_size")
    if mm_hidden is not None and mm_hidden != dims.projector_in:
        raise CheckpointError(
            vita_path, "mm_hidden_size",
            f"is {mm_hidden}, but InternViT hidden_size {dims.hidden_size} after the 2×2 pixel shuffle gives {dims.projector_in}",
        )
    return dims


def _dashed(section: Any) -> dict[str, Any]:
    """train.yaml sections use `transformer-attention-dim`; the reference accepts '-' and '_' alike."""
    return {str(k).replace("-", "_"): v for k, v in section.items()} if isinstance(section, Mapping) else {}


def audio_dims(train: Mapping[str, Any], path: Path, vita: Mapping[str, Any], vita_path: Path) -> AudioEncoderDims:
    encoder = train.get("encoder_conf")
    if not isinstance(encoder, Mapping):
        raise CheckpointError(path, "encoder_conf", "missing")
    overview = _dashed(encoder.get("overview_conf"))
    _expect(overview, "encoder_layer_config", path, ("subsampling-transformer",), default="tdnn-dtc")
    para = encoder.get("para_conf") if isinstance(encoder.get("para_conf"), Mapping) else {}
    sub = _dashed(para.get("subsampling"))
    tr = _dashed(para.get("transformer"))
    model = _dashed(train.get("model_conf"))
    _expect(sub, "subsampling_rate", path, (4,), default=4)
    _expect(tr, "transformer_input_layer", path, ("linear",), default="linear")
    _expect(tr, "transformer_pos_enc_class", path, ("rel-enc",), default="abs-enc")
    _expect(tr, "transformer_normalize_before", path, (True,), default=True)
    _expect(tr, "transformer_concat_after", path, (False,), default=False)
    _expect(tr, "transformer_positionwise_layer_type", path, ("linear",), default="linear")
    # Defaults: whale/init_model.py audioEncoder's keyword defaults.
    _expect(model, "adpter_type", path, ("subsampling",), default="cnn")
    _expect(model, "norm", path, ("layer",), default="batch")
    _expect(model, "activation_func", path, ("gelu",), default="relu")
    if model.get("add_audio_bos_eos", False):
        raise CheckpointError(path, "model_conf.add_audio_bos_eos", "is true; VITA-1.5 has no audio BOS/EOS")
    if vita.get("audio_prompt_finetune", False):
        raise CheckpointError(vita_path, "audio_prompt_finetune", "is true; audio prompt embeddings are not implemented")
    mel_bins = _get(train, "input_dim", path)
    attention_dim = _get(tr, "transformer_attention_dim", path)
    enc_out = _get(model, "enc_out_dim", path)
    for key, value in (("transformer_input_dim", tr), ("transformer_output_dim", tr), ("subsampling_output_dim", sub)):
        if key in value and value[key] != attention_dim:
            raise CheckpointError(path, key, f"is {value[key]}, expected transformer-attention-dim {attention_dim}")
    if sub.get("subsampling_input_dim", mel_bins) != mel_bins:
        raise CheckpointError(path, "subsampling-input-dim", f"is {sub['subsampling_input_dim']}, expected input_dim {mel_bins}")
    if enc_out != attention_dim:
        raise CheckpointError(path, "model_conf.enc_out_dim", f"is {enc_out}, expected the encoder width {attention_dim}")
    llm_hidden = _get(model, "llm_embed_dim", path)
    if llm_hidden != vita.get("hidden_size", llm_hidden):
        raise CheckpointError(path, "model_conf.llm_embed_dim", f"is {llm_hidden}, but the LLM hidden_size is {vita['hidden_size']}")
    fbank = _dashed(_dashed(train.get("dataset_conf")).get("fbank_conf"))
    if fbank.get("num_mel_bins", mel_bins) != mel_bins:
        raise CheckpointError(path, "dataset_conf.fbank_conf.num_mel_bins", f"is {fbank['num_mel_bins']}, expected input_dim {mel_bins}")
    return AudioEncoderDims(
        num_mel_bins=mel_bins,
        attention_dim=attention_dim,
        attention_heads=_get(tr, "transformer_attention_heads", path),
        linear_units=_get(tr, "transformer_linear_units", path),
        num_blocks=_get(tr, "transformer_num_blocks", path),
        adapter_hidden=2 * enc_out,  # CNNSubsampling, cnn_num = 1: Conv1d(enc_out → 2·enc_out)
        llm_hidden=llm_hidden,
        adapter_kernel_size=_get(model, "kernel_size", path, default=3),
    )


def tts_dims(model_json: Any, path: Path, llm_hidden: int) -> TTSDims:
    if not (isinstance(model_json, list) and len(model_json) == 3 and isinstance(model_json[2], Mapping)):
        raise CheckpointError(path, None, "expected a JSON list [idim, odim, {args}]")
    idim, odim, args = model_json
    args = {**args, "idim": args.get("idim", idim), "odim": args.get("odim", odim)}
    hidden = _get(args, "transformer_attention_dim", path)
    for key in ("idim", "encoder_output_dim"):
        if _get(args, key, path, default=hidden) != hidden:
            raise CheckpointError(path, key, f"is {args[key]}, expected transformer_attention_dim {hidden}")
    if llm_hidden != TTS_FRAMES_PER_TEXT_TOKEN * hidden:
        raise CheckpointError(
            path, "idim", f"is {hidden}; the LLM hidden_size {llm_hidden} must be {TTS_FRAMES_PER_TEXT_TOKEN} × idim"
        )
    return TTSDims(
        hidden_size=hidden,
        intermediate_size=_get(args, "transformer_linear_units", path),
        num_heads=_get(args, "transformer_attention_heads", path),
        num_blocks=_get(args, "transformer_num_blocks", path),
        codec_vocab=_get(args, "odim", path),
    )


def _int_tuple(config: Mapping[str, Any], key: str, path: Path) -> tuple[int, ...]:
    value = config.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and v > 0 for v in value):
        raise CheckpointError(path, key, f"is {value!r}, expected a list of positive integers")
    return tuple(value)


def codec_dims(config: Any, path: Path, codebook_dim: int, global_dim: int) -> CodecDims:
    """`codebook_dim` / `global_dim` are the widths of the codebook tensors: no config key holds them (the
    reference hard-codes 512 and 128)."""
    if not isinstance(config, Mapping):
        raise CheckpointError(path, None, "expected a JSON object")
    _expect(config, "resblock", path, ("1", 1))
    _expect(config, "n_code_groups", path, (1,))
    _expect(config, "residul_layer", path, (1,))
    dilations = config.get("resblock_dilation_sizes")
    if not isinstance(dilations, list) or not all(isinstance(d, list) and d for d in dilations):
        raise CheckpointError(path, "resblock_dilation_sizes", f"is {dilations!r}, expected a list of lists")
    kernels = _int_tuple(config, "resblock_kernel_sizes", path)
    if len(dilations) != len(kernels):
        raise CheckpointError(path, "resblock_dilation_sizes", f"has {len(dilations)} entries for {len(kernels)} kernels")
    rates = _int_tuple(config, "upsample_rates", path)
    if len(_int_tuple(config, "upsample_kernel_sizes", path)) != len(rates):
        raise CheckpointError(path, "upsample_kernel_sizes", f"needs one kernel per upsample rate ({len(rates)})")
    global_tokens = _int_tuple(config, "global_tokens", path) if config.get("global_tokens") else ()
    global_code_num = _get(config, "global_code_num", path)
    if len(global_tokens) != global_code_num:
        raise CheckpointError(path, "global_tokens", f"has {len(global_tokens)} ids for global_code_num {global_code_num}")
    feature_conv = config.get("global_feature_conv")
    if isinstance(feature_conv, list) and len(feature_conv) == 5 and feature_conv[2] != global_dim:
        raise CheckpointError(path, "global_feature_conv", f"outputs {feature_conv[2]} channels, but the global codebooks hold {global_dim}")
    return CodecDims(
        codebook_dim=codebook_dim,
        upsample_initial_channel=_get(config, "upsample_initial_channel", path),
        upsample_rates=rates,
        upsample_kernel_sizes=_int_tuple(config, "upsample_kernel_sizes", path),
        resblock_kernel_sizes=kernels,
        resblock_dilation_sizes=tuple(tuple(d) for d in dilations),
        n_codes=_get(config, "n_codes", path),
        global_code_num=global_code_num,
        global_dim=global_dim,
        global_tokens=global_tokens,
        sampling_rate=_get(config, "sampling_rate", path, default=24000),
    )

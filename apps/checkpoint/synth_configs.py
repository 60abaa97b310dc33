"""Config files of a synthesized checkpoint, in the official formats (docs/CHECKPOINTS.md), filled from a preset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.presets import ModelPreset
from shared.tokenizer import bundled_tokenizer_dir

# Where VITA's training scripts kept the two encoders: real release configs carry such paths, which do not
# exist on a serving machine, so the synthesized config exercises the look-up by directory name.
TRAINED_VISION_TOWER = "/mnt/cfs/lhj/model_weights/InternViT-300M-448px"
TRAINED_AUDIO_ENCODER = "/mnt/cfs2/lhj/model_weights/audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning"
LAST_VITA_TOKEN_ID = 151664  # VITA's tokenizer: 151643 regular tokens + 22 added tokens (docs/MODEL.md#tokens)
SYNTHETIC_MARKER = "vita_serve_synthetic"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Freeze-Omni codec values for the fields synthesis does not read (the codec is shared with Freeze-Omni).
GLOBAL_FEATURE_CONV_HIDDEN_RATIO = 2  # [128, 64, 128, 3, 1]: hidden = out / 2


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def vita_config(preset: ModelPreset, seed: int) -> dict[str, Any]:
    d = preset.llm
    return {
        "architectures": ["VITAQwen2ForCausalLM"],
        "model_type": "vita-Qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": d.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": d.intermediate_size,
        "max_position_embeddings": d.max_position_embeddings,
        "max_window_layers": d.num_layers,
        "num_attention_heads": d.num_heads,
        "num_hidden_layers": d.num_layers,
        "num_key_value_heads": d.num_kv_heads,
        "rms_norm_eps": d.rms_norm_eps,
        "rope_theta": d.rope_theta,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.44.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": d.vocab_size,
        "mm_vision_tower": TRAINED_VISION_TOWER,
        "mm_audio_encoder": TRAINED_AUDIO_ENCODER,
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": preset.vision.projector_in,
        "use_mm_proj": True,
        "image_aspect_ratio": "square",
        "tokenizer_model_max_length": 6200,
        "tokenizer_padding_side": "right",
        "freeze_audio_encoder": True,
        "freeze_audio_encoder_adapter": True,
        "unfreeze_vision_tower": False,
        "use_s2": False,
        "continuous_training": False,
        SYNTHETIC_MARKER: {"preset": preset.name, "seed": seed, "weights": "seeded random, not VITA-1.5"},
    }


def generation_config() -> dict[str, Any]:
    return {"bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643, "do_sample": False}


def internvit_config(preset: ModelPreset) -> dict[str, Any]:
    v = preset.vision
    return {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "attention_dropout": 0.0,
        "drop_path_rate": 0.1,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": v.hidden_size,
        "image_size": v.image_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": v.intermediate_size,
        "layer_norm_eps": v.layer_norm_eps,
        "norm_type": "layer_norm",
        "num_attention_heads": v.num_heads,
        "num_channels": 3,
        "num_hidden_layers": v.num_layers,
        "patch_size": v.patch_size,
        "qk_normalization": False,
        "qkv_bias": True,
        "torch_dtype": "bfloat16",
        "use_flash_attn": True,
    }


def internvit_preprocessor(preset: ModelPreset) -> dict[str, Any]:
    size = preset.vision.image_size
    return {
        "crop_size": size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
        "resample": 3, "size": size,
    }


def audio_train_yaml(preset: ModelPreset) -> dict[str, Any]:
    a = preset.audio
    return {
        "input_dim": a.num_mel_bins,
        "is_json_cmvn": True,
        "dataset_conf": {
            "resample_conf": {"resample_rate": 16000},
            "fbank_conf": {"num_mel_bins": a.num_mel_bins, "frame_length": 25, "frame_shift": 10, "dither": 0.0},
        },
        "encoder_conf": {
            "overview_conf": {
                "encoder-input-dim": a.num_mel_bins,
                "encoder-layer-config": "subsampling-transformer",
                "encoder-output-dim": a.attention_dim,
            },
            "para_conf": {
                "subsampling": {
                    "subsampling-rate": 4,
                    "subsampling-input-dim": a.num_mel_bins,
                    "subsampling-output-dim": a.attention_dim,
                    "subsampling-dropout-rate": 0.1,
                },
                "transformer": {
                    "transformer-input-dim": a.attention_dim,
                    "transformer-output-dim": a.attention_dim,
                    "transformer-attention-dim": a.attention_dim,
                    "transformer-attention-heads": a.attention_heads,
                    "transformer-linear-units": a.linear_units,
                    "transformer-num-blocks": a.num_blocks,
                    "transformer-dropout-rate": 0.1,
                    "transformer-attention-dropout-rate": 0.0,
                    "transformer-positional-dropout-rate": 0.1,
                    "transformer-input-layer": "linear",
                    "transformer-pos-enc-class": "rel-enc",
                    "transformer-normalize-before": True,
                    "transformer-concat-after": False,
                    "transformer-positionwise-layer-type": "linear",
                    "transformer-positionwise-conv-kernel_size": 1,
                    "transformer-chunk_size": 4,
                    "transformer-left_chunks": 16,
                    "transformer-dynamic-chunks": False,
                },
            },
        },
        "model_conf": {
            "llm_path": "Qwen2.5-7B-Instruct",
            "freeze_llm": True,
            "enc_out_dim": a.attention_dim,
            "llm_embed_dim": a.llm_hidden,
            "kernel_size": a.adapter_kernel_size,
            "adpter_type": "subsampling",
            "activation_func": "gelu",
            "norm": "layer",
            "add_audio_bos_eos": False,
        },
    }


def cmvn_stats(mean: list[float], istd: list[float], frames: int) -> dict[str, Any]:
    """JSON `global_cmvn` (sums over `frames` frames) whose derived mean/istd are `mean`/`istd`."""
    return {
        "mean_stat": [m * frames for m in mean],
        "var_stat": [(1.0 / (s * s) + m * m) * frames for m, s in zip(mean, istd)],
        "frame_num": frames,
    }


def tts_decoder_json(preset: ModelPreset) -> list[Any]:
    t = preset.tts
    args = {
        "idim": t.hidden_size,
        "odim": t.codec_vocab,
        "transformer_attention_dim": t.hidden_size,
        "transformer_linear_units": t.intermediate_size,
        "transformer_num_blocks": t.num_blocks,
        "transformer_attention_heads": t.num_heads,
        "transformer_dropout_rate": 0.1,
        "encoder_output_dim": t.hidden_size,
        "encoder_pre_norm_type": "ln",
        "encoder_drop_rate": 0.1,
        "encoder_criterion": "ce",
        "encoder_upsample_rate": 1,
        "kv_cache_prefix_finetune": 1,
    }
    return [t.hidden_size, t.codec_vocab, args]


def global_feature_conv(preset: ModelPreset) -> list[int]:
    g = preset.codec.global_dim
    return [g, g // GLOBAL_FEATURE_CONV_HIDDEN_RATIO, g, 3, 1]


def codec_json(preset: ModelPreset) -> dict[str, Any]:
    c = preset.codec
    return {
        "resblock": "1",
        "upsample_rates": list(c.upsample_rates),
        "upsample_kernel_sizes": list(c.upsample_kernel_sizes),
        "upsample_initial_channel": c.upsample_initial_channel,
        "resblock_kernel_sizes": list(c.resblock_kernel_sizes),
        "resblock_dilation_sizes": [list(d) for d in c.resblock_dilation_sizes],
        "n_code_groups": 1,
        "residul_layer": 1,
        "n_codes": c.n_codes,
        "global_code_num": c.global_code_num,
        "global_feature_conv": global_feature_conv(preset),
        "global_tokens": list(c.global_tokens),
        "codebook_loss_lambda": 1.0,
        "commitment_loss_lambda": 0.25,
        "sampling_rate": c.sampling_rate,
    }


def write_tokenizer(directory: Path) -> None:
    """The bundled Qwen BPE files, with VITA's 22 added tokens (151643-151664) instead of the bundle's 26."""
    source = bundled_tokenizer_dir()
    for name in ("vocab.json", "merges.txt"):
        (directory / name).write_bytes((source / name).read_bytes())
    tokenizer = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["added_tokens"] = [t for t in tokenizer.get("added_tokens", []) if t["id"] <= LAST_VITA_TOKEN_ID]
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    added = {k: v for k, v in config.get("added_tokens_decoder", {}).items() if int(k) <= LAST_VITA_TOKEN_ID}
    kept = {v["content"] for v in added.values()}
    write_json(directory / "tokenizer_config.json", {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in config.get("additional_special_tokens", []) if t in kept],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 6200,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    })

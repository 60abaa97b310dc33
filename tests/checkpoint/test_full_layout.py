"""Full-size layout, without writing full-size weights: names and shapes on paper (docs/MODEL.md#checkpoints),
what the services expect (their runtime modules on the meta device), and the config files → dims."""

from __future__ import annotations

import math

import pytest

from services.audio.checkpoint import expected_shapes as audio_expected
from services.llm.checkpoint import expected_shapes as llm_expected
from services.speech.checkpoint import codec_expected_shapes, tts_expected_shapes
from services.vision.checkpoint import expected_shapes as vision_expected
from apps.checkpoint import official
from shared.checkpoint.dims import audio_dims, codec_dims, llm_dims, tts_dims, vision_dims
from shared.checkpoint.files import read_json, read_yaml
from shared.checkpoint.layout import AUDIO_PREFIX, PROJECTOR_PREFIX, VISION_PREFIX
from apps.checkpoint.synth import write_configs
from shared.presets import FULL


def _params(shapes) -> float:
    return sum(math.prod(shape) for shape in shapes.values()) / 1e6


def _prefixed(prefix, shapes):
    return {prefix + key: shape for key, shape in shapes.items()}


def test_official_names_and_shapes_are_the_spec_tables():
    llm = {**official.llm_body(FULL.llm), **official.lm_head(FULL.llm)}
    assert llm["model.embed_tokens.weight"] == llm["lm_head.weight"] == (152064, 3584)
    assert llm["model.layers.27.self_attn.k_proj.weight"] == (512, 3584)
    assert llm["model.layers.0.self_attn.q_proj.bias"] == (3584,)
    assert llm["model.layers.0.mlp.down_proj.weight"] == (3584, 18944)
    assert "model.layers.0.self_attn.o_proj.bias" not in llm and "model.layers.28.mlp.up_proj.weight" not in llm
    vit = official.internvit(FULL.vision)
    assert vit["embeddings.position_embedding"] == (1, 1025, 1024)
    assert vit["embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert vit["encoder.layers.23.attn.qkv.weight"] == (3072, 1024) and vit["encoder.layers.23.ls2"] == (1024,)
    assert official.projector(FULL.vision) == {
        "0.weight": (3584, 4096), "0.bias": (3584,), "2.weight": (3584, 3584), "2.bias": (3584,),
    }
    whale = official.whale(FULL.audio)
    assert whale["encoder.enc.0.core.out.0.weight"] == (1024, 19456)
    assert whale["encoder.enc.1.encoders.23.self_attn.pos_bias_u"] == (16, 64)
    assert whale["adpter.conv1d2.weight"] == (2048, 1024, 5) and whale["adpter.project.weight"] == (3584, 2048)
    tts = official.tts_decoder(FULL.tts)
    assert tts["embedding.weight"] == tts["out_fnn.weight"] == (1028, 896)
    assert tts["layers_pre_nn.1.mlp.gate_proj.weight"] == (4864, 896) and "layers_pre_nn.2.norm.weight" not in tts
    generator = official.codec_generator(FULL.codec)
    ups = [generator[f"ups.{i}.weight_v"] for i in range(4)]
    assert ups == [(512, 256, 16), (256, 128, 11), (128, 64, 11), (64, 32, 5)]
    assert generator["ups.0.weight_g"] == (512, 1, 1) and generator["conv_post.weight_v"] == (1, 32, 7)
    assert "resblocks.11.convs2.2.weight_v" in generator and "resblocks.12.convs1.0.weight_v" not in generator
    quantizer = official.codec_quantizer(FULL.codec)
    assert quantizer["quantizer_modules.0.embedding.weight"] == (1024, 512)
    assert quantizer["quantizer_modules_globaltokens.7.embedding.weight"] == (1024, 16)


def test_parameter_counts_are_those_measured_on_the_reference():
    """docs/MODEL.md#checkpoints: parameter counts at full size (millions)."""
    tts = official.tts_decoder(FULL.tts)
    counted = {
        "InternViT": _params(official.internvit(FULL.vision)),
        "projector": _params(official.projector(FULL.vision)),
        "whale encoder": _params({k: v for k, v in official.whale(FULL.audio).items() if k.startswith("encoder.")}),
        "adapter": _params({k: v for k, v in official.whale(FULL.audio).items() if k.startswith("adpter.")}),
        "TTS pre-net": _params({k: v for k, v in tts.items() if k.startswith("layers_pre_nn.")}),
        "TTS AR stack": _params({k: v for k, v in tts.items() if not k.startswith(("layers_pre_nn.", "layers_prefix."))}),
        "unused prefix stack": _params({k: v for k, v in tts.items() if k.startswith("layers_prefix.")}),
        "codec generator": _params(official.codec_generator(FULL.codec)),
        "codec encoder": _params(official.codec_encoder(FULL.codec, 32, (128, 64, 128, 3))),
        "codec quantizer": _params(official.codec_quantizer(FULL.codec)),
    }
    spec = {
        "InternViT": 304.0, "projector": 27.5, "whale encoder": 358.0, "adapter": 17.8, "TTS pre-net": 32.6,
        "TTS AR stack": 67.0, "unused prefix stack": 65.1, "codec generator": 15.4, "codec encoder": 47.4,
        "codec quantizer": 0.66,
    }
    for module, millions in spec.items():
        assert counted[module] == pytest.approx(millions, abs=0.051), module


def test_each_service_expects_exactly_the_official_tensors_at_full_size():
    assert llm_expected(FULL.llm) == {**official.llm_body(FULL.llm), **official.lm_head(FULL.llm)}
    assert vision_expected(FULL.vision) == {
        **_prefixed(VISION_PREFIX, official.internvit(FULL.vision)),
        **_prefixed(PROJECTOR_PREFIX, official.projector(FULL.vision)),
    }
    assert audio_expected(FULL.audio) == _prefixed(AUDIO_PREFIX, official.whale(FULL.audio))
    tts = official.tts_decoder(FULL.tts)
    assert tts_expected_shapes(FULL.tts) == {k: v for k, v in tts.items() if not k.startswith("layers_prefix.")}
    assert codec_expected_shapes(FULL.codec) == {
        **_prefixed("generator.", official.codec_generator(FULL.codec)),
        **_prefixed("quantizer.", official.codec_quantizer(FULL.codec)),
    }


def test_full_config_files_describe_the_full_preset(tmp_path):
    write_configs(tmp_path, FULL, seed=1)
    vita_path = tmp_path / "config.json"
    vita = read_json(vita_path)
    assert llm_dims(vita, vita_path) == FULL.llm
    vit_path = tmp_path / "InternViT-300M-448px" / "config.json"
    assert vision_dims(read_json(vit_path), vit_path, vita, vita_path) == FULL.vision
    yaml_path = tmp_path / "audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning" / "train.yaml"
    assert audio_dims(read_yaml(yaml_path), yaml_path, vita, vita_path) == FULL.audio
    decoder = tmp_path / "vita_tts_ckpt" / "decoder" / "model.json"
    assert tts_dims(read_json(decoder), decoder, FULL.llm.hidden_size) == FULL.tts
    codec = tmp_path / "vita_tts_ckpt" / "codec" / "model.json"
    assert codec_dims(read_json(codec), codec, codebook_dim=512, global_dim=128) == FULL.codec

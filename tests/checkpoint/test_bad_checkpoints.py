"""Broken checkpoints stop a service at start with one `CheckpointError` naming the file and the key;
nothing is served from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.audio.weights import load_audio_encoder
from services.llm.weights import load_llm
from services.speech.weights import load_speech_models
from services.vision.weights import load_vision
from shared.checkpoint import CheckpointError
from apps.checkpoint.inspect import inspect_checkpoint
from apps.cli import main as vita

from .conftest import replace_bytes

CPU, FP32 = "cpu", torch.float32
INDEX = "model.safetensors.index.json"
AUDIO_DIR = "audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning"


def llm(root):
    return load_llm(None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=root)


def vision(root):
    return load_vision(None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=root)


def audio(root):
    return load_audio_encoder(None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=root)


def speech(root):
    return load_speech_models(None, None, None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=root)


def weight_map(root: Path) -> dict[str, str]:
    return json.loads((root / INDEX).read_text())["weight_map"]


def rewrite_index(root: Path, weights: dict[str, str]) -> None:
    replace_bytes(root / INDEX, json.dumps({"metadata": {}, "weight_map": weights}).encode())


def rewrite_shard(root: Path, key_in_shard: str, change) -> str:
    """Rewrites the shard holding `key_in_shard` with `change(tensors)` applied; returns its file name."""
    name = weight_map(root)[key_in_shard]
    tensors = load_file(root / name)
    change(tensors)
    (root / name).unlink()
    save_file(tensors, str(root / name), metadata={"format": "pt"})
    return name


def expect_error(load, root, file_name: str, key: str | None, words: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as caught:
        load(root)
    error = caught.value
    assert error.path is not None and error.path.name == file_name, str(error)
    assert error.key == key, str(error)
    assert words in error.problem, str(error)
    assert file_name in str(error) and (key is None or key in str(error))
    return error


def test_missing_shard(broken):
    name = weight_map(broken)["lm_head.weight"]
    (broken / name).unlink()
    expect_error(llm, broken, name, "lm_head.weight", "missing")
    expect_error(speech, broken, name, "lm_head.weight", "missing")  # a broken download fails every service


def test_truncated_safetensors(broken):
    name = weight_map(broken)["model.norm.weight"]
    data = (broken / name).read_bytes()
    replace_bytes(broken / name, data[: len(data) // 2])
    expect_error(llm, broken, name, None, "truncated")
    expect_error(vision, broken, name, None, "truncated")
    assert speech(broken).embed_table.shape[0] == 152064  # its one shard is intact


def test_index_naming_an_absent_file(broken):
    weights = weight_map(broken)
    weights["model.mm_projector.0.weight"] = "model-00009-of-00003.safetensors"
    rewrite_index(broken, weights)
    expect_error(vision, broken, "model-00009-of-00003.safetensors", "model.mm_projector.0.weight", "missing")


def test_tensor_with_the_wrong_shape(broken):
    key = "model.vision_tower.vision_tower.encoder.layers.1.mlp.fc1.weight"
    name = rewrite_shard(broken, key, lambda t: t.update({key: t[key][:, :-1].contiguous()}))
    error = expect_error(vision, broken, name, key, "has shape [128, 63], expected [128, 64] from")
    assert "InternViT-300M-448px/config.json" in error.problem


def test_tensor_with_the_wrong_dtype(broken):
    key = "model.layers.0.input_layernorm.weight"
    name = rewrite_shard(broken, key, lambda t: t.update({key: t[key].to(torch.int32)}))
    expect_error(llm, broken, name, key, "dtype int32")


def test_unexpected_tensor_in_the_shards(broken):
    key = "model.layers.0.mlp.extra_proj.weight"
    name = rewrite_shard(broken, "model.norm.weight", lambda t: t.update({key: torch.zeros(2, 2, dtype=torch.bfloat16)}))
    weights = weight_map(broken)
    weights[key] = name
    rewrite_index(broken, weights)
    expect_error(llm, broken, name, key, "unexpected tensor")


def test_language_only_directory_serves_the_llm_and_refuses_vision_and_audio(broken):
    multimodal = ("model.vision_tower.", "model.mm_projector.", "model.audio_encoder.")
    rewrite_shard(broken, "model.norm.weight", lambda t: [t.pop(k) for k in list(t) if k.startswith(multimodal)])
    rewrite_index(broken, {k: v for k, v in weight_map(broken).items() if not k.startswith(multimodal)})
    assert llm(broken).dims.hidden_size == 256
    assert speech(broken).tts is not None
    expect_error(vision, broken, INDEX, "model.vision_tower.vision_tower.*", "no vision weights")
    expect_error(audio, broken, INDEX, "model.audio_encoder.*", "no audio weights")


def test_codec_without_generator(broken):
    path = broken / "vita_tts_ckpt" / "codec" / "final.pt"
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["generator"]
    path.unlink()
    torch.save(checkpoint, path)
    expect_error(speech, broken, "final.pt", "generator", "missing")


def test_tts_decoder_with_a_missing_tensor(broken):
    path = broken / "vita_tts_ckpt" / "decoder" / "final.pt"
    state = torch.load(path, weights_only=True)
    del state["layers.1.mlp.up_proj.weight"]
    path.unlink()
    torch.save({"model": state}, path)  # the wrapped form is accepted too
    error = expect_error(speech, broken, "final.pt", "layers.1.mlp.up_proj.weight", "missing")
    assert error.path.parent.name == "decoder"


def test_config_contradicting_the_tensors(broken):
    config = json.loads((broken / "config.json").read_text())
    config["num_key_value_heads"] = 4  # the k/v projections hold 2 heads
    replace_bytes(broken / "config.json", json.dumps(config).encode())
    name = weight_map(broken)["model.layers.0.self_attn.k_proj.weight"]
    key = "model.layers.0.self_attn.k_proj.weight"
    error = expect_error(llm, broken, name, key, "has shape [128, 256], expected [256, 256] from")
    assert error.problem.endswith("config.json")


def test_encoder_config_contradicting_the_tensors(broken):
    path = broken / "InternViT-300M-448px" / "config.json"
    config = json.loads(path.read_text())
    config["intermediate_size"] = 256
    replace_bytes(path, json.dumps(config).encode())
    key = "model.vision_tower.vision_tower.encoder.layers.0.mlp.fc1.weight"
    error = expect_error(vision, broken, weight_map(broken)[key], key, "has shape [128, 64], expected [256, 64] from")
    assert "InternViT-300M-448px/config.json" in error.problem


def test_unsupported_architecture_in_train_yaml(broken):
    path = broken / AUDIO_DIR / "train.yaml"
    replace_bytes(path, path.read_text().replace("norm: layer", "norm: batch").encode())
    expect_error(audio, broken, "train.yaml", "norm", "'batch'; this server implements 'layer'")


def test_cmvn_falls_back_to_the_json_stats_when_the_shards_have_none(broken):
    keys = ("model.audio_encoder.encoder.global_cmvn.mean", "model.audio_encoder.encoder.global_cmvn.istd")
    rewrite_shard(broken, keys[0], lambda t: [t.pop(k) for k in keys])
    rewrite_index(broken, {k: v for k, v in weight_map(broken).items() if k not in keys})
    stats = json.loads((broken / AUDIO_DIR / "global_cmvn").read_text())
    mean = torch.tensor(stats["mean_stat"], dtype=torch.float64) / stats["frame_num"]
    var = torch.tensor(stats["var_stat"], dtype=torch.float64) / stats["frame_num"] - mean**2
    model = audio(broken)
    torch.testing.assert_close(model.encoder.global_cmvn.mean, mean.float(), rtol=0, atol=0)
    torch.testing.assert_close(model.encoder.global_cmvn.istd, var.rsqrt().float(), rtol=1e-7, atol=0)
    replace_bytes(broken / AUDIO_DIR / "global_cmvn", b"{}")
    expect_error(audio, broken, "global_cmvn", "mean_stat", "expected a list of 80")


def test_inspect_reports_what_each_service_would_do(tiny_checkpoint, broken, capsys):
    report, ok = inspect_checkpoint(tiny_checkpoint)
    assert ok and report.count(" OK: ") == 4 and "SYNTHETIC" in report
    assert "known-unused, not loaded: layers_prefix.*" in report
    (broken / "vita_tts_ckpt" / "codec" / "final.pt").unlink()
    assert vita(["checkpoint", "inspect", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "speech  CANNOT SERVE:" in out and "codec/final.pt: file not found" in out
    assert "llm     OK" in out


def test_a_service_process_refuses_to_start_and_names_the_file(broken):
    path = broken / "vita_tts_ckpt" / "decoder" / "model.json"
    replace_bytes(path, path.read_text().replace('"transformer_linear_units": 128', '"transformer_linear_units": 96').encode())
    env = {**os.environ, "VITA_CHECKPOINT": str(broken), "VITA_PORT": "0", "VITA_METRICS_PORT": "-1", "VITA_TORCH_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "services.speech"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "READY" not in result.stdout and result.stdout.strip() == ""
    assert "speech cannot start" in result.stderr and "Traceback" not in result.stderr
    assert "decoder/final.pt: layers_pre_nn.0.mlp.gate_proj.weight: has shape [128, 64], expected [96, 64]" in result.stderr

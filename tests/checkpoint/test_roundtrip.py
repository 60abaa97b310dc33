"""synth → load → every served parameter equals what the files hold (read here with plain safetensors /
torch.load, not with the loaders' readers); dims come from the files; each service reads only its part."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from services.audio.weights import load_audio_encoder
from services.llm.weights import load_llm
from services.speech.weights import load_speech_models
from services.vision.weights import load_vision
from shared.checkpoint.layout import checkpoint_tokenizer
from shared.presets import TINY

CPU, FP32 = "cpu", torch.float32
VISION = "model.vision_tower.vision_tower."
AUDIO = "model.audio_encoder."


def shard_tensors(root: Path) -> dict[str, torch.Tensor]:
    index = json.loads((root / "model.safetensors.index.json").read_text())
    tensors = {}
    for name in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(root / name))
    assert set(tensors) == set(index["weight_map"])
    return tensors


def assert_served(state: dict[str, torch.Tensor], written: dict[str, torch.Tensor]) -> None:
    assert set(state) == set(written)
    for name, value in state.items():
        assert torch.equal(value, written[name].to(value.dtype)), name


def test_llm_serves_the_shard_tensors_with_the_config_dims(tiny_checkpoint):
    shards = shard_tensors(tiny_checkpoint)
    model = load_llm(None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=tiny_checkpoint)
    assert model.dims == TINY.llm and not model.training
    assert_served(model.state_dict(), {k: v for k, v in shards.items() if not k.startswith(("model.vision", "model.mm", "model.audio"))})
    bf16 = load_llm(None, seed=0, device=CPU, dtype=torch.bfloat16, checkpoint_dir=tiny_checkpoint)
    assert torch.equal(bf16.lm_head.weight, shards["lm_head.weight"])  # stored bf16, served bf16: bit-exact


def test_vision_serves_shard_tensors_not_the_standalone_internvit(tiny_checkpoint):
    shards = shard_tensors(tiny_checkpoint)
    model = load_vision(None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=tiny_checkpoint)
    assert model.dims == TINY.vision
    written = {"vision_tower." + k[len(VISION):]: v for k, v in shards.items() if k.startswith(VISION)}
    written.update({"mm_projector." + k[len("model.mm_projector."):]: v for k, v in shards.items() if k.startswith("model.mm_projector.")})
    assert_served(model.state_dict(), written)
    standalone = load_file(tiny_checkpoint / "InternViT-300M-448px" / "model.safetensors")
    patch = "embeddings.patch_embedding.weight"
    assert not torch.equal(standalone[patch].float(), model.vision_tower.embeddings.patch_embedding.weight)


def test_audio_serves_shard_tensors_and_shard_cmvn(tiny_checkpoint):
    shards = shard_tensors(tiny_checkpoint)
    model = load_audio_encoder(None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=tiny_checkpoint)
    assert model.dims == TINY.audio
    assert_served(model.state_dict(), {k[len(AUDIO):]: v for k, v in shards.items() if k.startswith(AUDIO)})
    standalone = torch.load(tiny_checkpoint / "audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning" / "final.pt", weights_only=True)
    assert not torch.equal(standalone["adpter.project.weight"], model.adpter.project.weight)
    # The computed sinusoid table is the one the random-weights path builds.
    random = load_audio_encoder(TINY.audio, seed=1, device=CPU, dtype=FP32)
    assert torch.equal(model.encoder.enc[1].pos_table, random.encoder.enc[1].pos_table)


def test_speech_serves_decoder_codec_and_the_shard_embedding(tiny_checkpoint):
    models = load_speech_models(None, None, None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=tiny_checkpoint)
    assert (models.tts.dims, models.codec.dims) == (TINY.tts, TINY.codec)
    shards = shard_tensors(tiny_checkpoint)
    assert torch.equal(models.embed_table, shards["model.embed_tokens.weight"])
    assert models.frames_per_text_token == 4
    decoder = torch.load(tiny_checkpoint / "vita_tts_ckpt" / "decoder" / "final.pt", weights_only=True)
    assert_served(models.tts.state_dict(), {k: v for k, v in decoder.items() if not k.startswith("layers_prefix.")})
    assert len(models.tts.layers_prefix) == 0  # never run, so never loaded
    codec = torch.load(tiny_checkpoint / "vita_tts_ckpt" / "codec" / "final.pt", weights_only=True)
    written = {f"quantizer.{k}": v for k, v in codec["quantizer"].items()}
    generator = codec["generator"]
    for key, g in generator.items():
        if key.endswith(".weight_g"):
            v = generator[key.replace("_g", "_v")]
            written[f"generator.{key[:-2]}"] = g * v / v.flatten(1).norm(dim=1).view(-1, 1, 1)  # w = g·v/‖v‖
        elif key.endswith(".bias"):
            written[f"generator.{key}"] = generator[key]
    served = models.codec.state_dict()
    assert set(served) == set(written) and models.codec.generator.conv_pre.weight.dtype == torch.float32
    for name, value in served.items():
        torch.testing.assert_close(value, written[name], rtol=1e-6, atol=1e-7, msg=name)


def test_each_service_opens_only_the_shards_it_needs(tiny_checkpoint, monkeypatch):
    import shared.checkpoint.files as files

    opened: list[str] = []
    real_open = files.safe_open

    def recording_open(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(files, "safe_open", recording_open)
    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())["weight_map"]
    models = load_speech_models(None, None, None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=tiny_checkpoint)
    assert set(opened) == {index["model.embed_tokens.weight"]} != {index["lm_head.weight"]}
    # Memory-mapped in the stored dtype; looked-up rows widen exactly.
    assert models.embed_table.dtype == torch.bfloat16
    rows = models.embed_table[torch.tensor([144766, 151645])].float()
    assert rows.shape == (2, TINY.llm.hidden_size) and torch.isfinite(rows).all()
    opened.clear()
    load_vision(None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=tiny_checkpoint)
    assert set(opened) == {index["model.mm_projector.0.weight"]}
    opened.clear()
    load_llm(None, seed=0, device=CPU, dtype=FP32, checkpoint_dir=tiny_checkpoint)
    assert set(opened) == set(index.values())


def test_tokenizer_is_the_checkpoints_with_vita_added_tokens(tiny_checkpoint):
    tokenizer = checkpoint_tokenizer(tiny_checkpoint, embedding_rows=TINY.llm.vocab_size)
    assert tokenizer.special.state_audio_reply == 144766 and tokenizer.special.im_end == 151645
    assert tokenizer.vocab_size == 151665  # 151643 + 22 added tokens (docs/MODEL.md#tokens)
    config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    assert len(config["added_tokens_decoder"]) == 22 and config["eos_token"] == "<|im_end|>"

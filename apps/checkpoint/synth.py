"""`vita checkpoint synth DIR --preset tiny|full`: seeded random weights in exactly the official layout.

Writes the VITA-1.5 directory with its config.json, tokenizer files and bf16 safetensors shards + index,
the InternViT directory (config.json, preprocessor_config.json, model.safetensors), the audio-encoder
directory (train.yaml, JSON global_cmvn, final.pt) and vita_tts_ckpt/{decoder,codec}/{model.json,final.pt}
(the codec generator in weight-norm form). `.pt` files are torch.save of dicts of tensors only. Tensors are
generated one at a time from a generator seeded by (seed, file, key), so the full preset (~9 B parameters)
is written in bounded memory; the stand-alone encoder copies use other seeds than the shard copies, as the
shard tensors are the ones served (docs/CHECKPOINTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from apps.checkpoint import official
from apps.checkpoint import synth_configs as cfg
from shared.checkpoint.files import INDEX_FILE
from shared.checkpoint.layout import (
    AUDIO_CMVN_FILE, AUDIO_CONFIG_FILE, AUDIO_DIR_NAMES, AUDIO_PREFIX, AUDIO_WEIGHTS_FILE, CONFIG_FILE,
    PROJECTOR_PREFIX, TTS_CODEC_DIR, TTS_CONFIG_FILE, TTS_DECODER_DIR, TTS_DIR, TTS_WEIGHTS_FILE,
    VISION_CONFIG_FILE, VISION_DIR_NAMES, VISION_PREFIX,
)
from shared.presets import ModelPreset
from shared.random_weights import INIT_STD, module_generator

MiB = 1024 * 1024
SHARD_BYTES = {"tiny": 64 * MiB, "full": 5 * 10**9}  # HF save_pretrained's 5 GB default at full size
CODEC_ENCODER_BASE = {"tiny": 4, "full": 32}  # unused analysis encoder: 32 in the release, small for tiny
SHARD_DTYPE = torch.bfloat16  # VITA-1.5 `torch_dtype`
CMVN_FRAMES = 1_000_000
# Random-value ranges (as in the services' seeded presets): CMVN like real log-mel speech statistics; codec
# convs with He gain so the waveform is audible without clipping (services/speech/weights.py).
CMVN_MEAN, CMVN_MEAN_SPREAD, CMVN_ISTD, CMVN_ISTD_SPREAD, CMVN_ISTD_MIN = 12.0, 2.0, 0.33, 0.05, 0.05
CODEC_GAIN, CODEC_RESIDUAL_GAIN, CODEC_POST_GAIN = math.sqrt(2.0), 0.5, 0.1
WEIGHT_NORM_SCALE = (0.5, 2.0)  # weight_v = folded weight × a random per-channel scale in this range
SCALE_LEAVES = ("weight", "ls1", "ls2")  # 1-D tensors with these leaf names are scales (norms, layer scale)


@dataclass(frozen=True)
class SynthResult:
    root: Path
    files: list[Path]
    parameters: int


def _random(seed: int, tag: str, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The generic rule: matrices N(0, 0.02²); 1-D scales 1 + N(0, 0.02²); biases N(0, 0.02²)."""
    generator = module_generator(seed, f"synth:{tag}:{key}")
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.int64)
    if leaf == "running_var":
        return torch.ones(shape)
    if leaf == "running_mean":
        return torch.zeros(shape)
    values = torch.randn(shape, generator=generator) * INIT_STD
    if len(shape) == 1 and leaf in SCALE_LEAVES:
        values += 1.0
    return values


def cmvn_values(seed: int, bins: int) -> tuple[list[float], list[float]]:
    generator = module_generator(seed, "synth:audio:global_cmvn")
    mean = CMVN_MEAN + CMVN_MEAN_SPREAD * torch.randn(bins, generator=generator)
    istd = (CMVN_ISTD + CMVN_ISTD_SPREAD * torch.randn(bins, generator=generator)).clamp_min(CMVN_ISTD_MIN)
    return mean.tolist(), istd.tolist()


def _cmvn_tensors(seed: int, bins: int) -> dict[str, torch.Tensor]:
    """The buffers the reference derives from the JSON stats (float64 → fp32), as the shards carry them."""
    mean, istd = cmvn_values(seed, bins)
    stats = cfg.cmvn_stats(mean, istd, CMVN_FRAMES)
    count = stats["frame_num"]
    derived_mean = [s / count for s in stats["mean_stat"]]
    var = [max(sq / count - m * m, 1e-20) for sq, m in zip(stats["var_stat"], derived_mean)]
    return {
        "encoder.global_cmvn.mean": torch.tensor(derived_mean, dtype=torch.float64).float(),
        "encoder.global_cmvn.istd": torch.tensor([1.0 / math.sqrt(v) for v in var], dtype=torch.float64).float(),
    }


def _codec_generator(preset: ModelPreset, seed: int) -> dict[str, torch.Tensor]:
    """Generator convs drawn folded (He-gain rule), then stored as weight_g / weight_v."""
    tensors: dict[str, torch.Tensor] = {}
    for name, (shape, stride) in official.generator_convs(preset.codec).items():
        generator = module_generator(seed, f"synth:codec:{name}")
        fan_in = shape[0] * shape[2] / stride if name.startswith("ups.") else shape[1] * shape[2]
        gain = CODEC_RESIDUAL_GAIN if ".convs2." in name else CODEC_POST_GAIN if name == "conv_post" else CODEC_GAIN
        weight = torch.randn(shape, generator=generator) * (gain / math.sqrt(fan_in))
        low, high = WEIGHT_NORM_SCALE
        scale = low + (high - low) * torch.rand((shape[0], 1, 1), generator=generator)
        tensors[f"{name}.weight_g"] = weight.flatten(1).norm(dim=1).view(-1, 1, 1)
        tensors[f"{name}.weight_v"] = weight * scale
        out_channels = shape[1] if name.startswith("ups.") else shape[0]
        tensors[f"{name}.bias"] = torch.randn(out_channels, generator=generator) * INIT_STD
    return tensors


def _codebooks(preset: ModelPreset, seed: int) -> dict[str, torch.Tensor]:
    return {
        key: torch.randn(shape, generator=module_generator(seed, f"synth:codec:{key}"))
        for key, shape in official.codec_quantizer(preset.codec).items()
    }


def _state(shapes: official.Shapes, seed: int, tag: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {
        key: (t if not t.is_floating_point() else t.to(dtype))
        for key, shape in shapes.items()
        for t in [_random(seed, tag, key, shape)]
    }


def _shard_tensors(preset: ModelPreset, seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    """The VITA safetensors in HF save order: LLM body, vision tower, projector, audio encoder, lm_head."""
    cmvn = _cmvn_tensors(seed, preset.audio.num_mel_bins)
    groups = [
        ("", official.llm_body(preset.llm)),
        (VISION_PREFIX, official.internvit(preset.vision)),
        (PROJECTOR_PREFIX, official.projector(preset.vision)),
        (AUDIO_PREFIX, official.whale(preset.audio)),
        ("", official.lm_head(preset.llm)),
    ]
    for prefix, shapes in groups:
        for key, shape in shapes.items():
            tensor = cmvn[key] if prefix == AUDIO_PREFIX and key in cmvn else _random(seed, "vita", prefix + key, shape)
            yield prefix + key, tensor.to(SHARD_DTYPE)


def _write_shards(root: Path, tensors: Iterator[tuple[str, torch.Tensor]], max_bytes: int) -> tuple[list[Path], int]:
    """HF-style sharding: a new shard starts when the next tensor would overflow the current one."""
    parts: list[Path] = []
    weight_map: dict[str, int] = {}
    current: dict[str, torch.Tensor] = {}
    size = total = parameters = 0

    def flush() -> None:
        nonlocal current, size
        part = root / f"shard-{len(parts):05d}.part"
        save_file(current, str(part), metadata={"format": "pt"})
        parts.append(part)
        current, size = {}, 0

    for key, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_bytes:
            flush()
        current[key] = tensor.contiguous()
        weight_map[key] = len(parts)
        size, total, parameters = size + nbytes, total + nbytes, parameters + tensor.numel()
    if current:
        flush()
    names = [f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors" for i in range(len(parts))]
    files = []
    for part, name in zip(parts, names):
        files.append(part.rename(root / name))
    index = {"metadata": {"total_size": total}, "weight_map": {k: names[i] for k, i in sorted(weight_map.items())}}
    cfg.write_json(root / INDEX_FILE, index)
    return [*files, root / INDEX_FILE], parameters


def write_configs(root: Path, preset: ModelPreset, seed: int) -> None:
    """Every config and tokenizer file of the layout (no weights)."""
    cfg.write_json(root / CONFIG_FILE, cfg.vita_config(preset, seed))
    cfg.write_json(root / "generation_config.json", cfg.generation_config())
    cfg.write_tokenizer(root)
    vision = root / VISION_DIR_NAMES[0]
    cfg.write_json(vision / VISION_CONFIG_FILE, cfg.internvit_config(preset))
    cfg.write_json(vision / "preprocessor_config.json", cfg.internvit_preprocessor(preset))
    audio = root / AUDIO_DIR_NAMES[0]
    audio.mkdir(parents=True, exist_ok=True)
    (audio / AUDIO_CONFIG_FILE).write_text(yaml.safe_dump(cfg.audio_train_yaml(preset), sort_keys=False), encoding="utf-8")
    mean, istd = cmvn_values(seed, preset.audio.num_mel_bins)
    cfg.write_json(audio / AUDIO_CMVN_FILE, cfg.cmvn_stats(mean, istd, CMVN_FRAMES))
    cfg.write_json(root / TTS_DIR / TTS_DECODER_DIR / TTS_CONFIG_FILE, cfg.tts_decoder_json(preset))
    cfg.write_json(root / TTS_DIR / TTS_CODEC_DIR / TTS_CONFIG_FILE, cfg.codec_json(preset))


def synthesize(root: Path, preset: ModelPreset, *, seed: int | None = None, max_shard_bytes: int | None = None) -> SynthResult:
    """Writes a complete checkpoint for `preset` under `root` (which must be empty or absent)."""
    seed = preset.init_seed if seed is None else seed
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; synth writes a fresh checkpoint directory")
    root.mkdir(parents=True, exist_ok=True)
    write_configs(root, preset, seed)
    max_bytes = max_shard_bytes or SHARD_BYTES.get(preset.name, SHARD_BYTES["full"])
    _, parameters = _write_shards(root, _shard_tensors(preset, seed), max_bytes)

    save_file(_state(official.internvit(preset.vision), seed, "internvit", SHARD_DTYPE),
              str(root / VISION_DIR_NAMES[0] / "model.safetensors"), metadata={"format": "pt"})
    standalone = _state(official.whale(preset.audio), seed, "audio-final")
    standalone.update(_cmvn_tensors(seed, preset.audio.num_mel_bins))
    torch.save(standalone, root / AUDIO_DIR_NAMES[0] / AUDIO_WEIGHTS_FILE)
    tts = root / TTS_DIR
    torch.save(_state(official.tts_decoder(preset.tts), seed, "tts"), tts / TTS_DECODER_DIR / TTS_WEIGHTS_FILE)
    feature_conv = tuple(cfg.global_feature_conv(preset)[:4])
    encoder_base = CODEC_ENCODER_BASE.get(preset.name, CODEC_ENCODER_BASE["full"])
    encoder = _state(official.codec_encoder(preset.codec, encoder_base, feature_conv), seed, "codec-encoder")
    torch.save(
        {"generator": _codec_generator(preset, seed), "quantizer": _codebooks(preset, seed), "encoder": encoder},
        tts / TTS_CODEC_DIR / TTS_WEIGHTS_FILE,
    )
    files = sorted(path for path in root.rglob("*") if path.is_file())
    return SynthResult(root, files, parameters)

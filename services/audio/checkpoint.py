"""Whale encoder + adapter from the official VITA-1.5 directory (docs/MODEL.md#audio, docs/CHECKPOINTS.md).

Dims come from the audio-encoder directory's train.yaml (plus the LLM width from config.json); weights come
from the VITA safetensors (`model.audio_encoder.*`), which override the stand-alone `final.pt` in the
reference, so `final.pt` is not read. The CMVN statistics are the shard buffers
`encoder.global_cmvn.{mean,istd}` when the shards hold them (what the reference serves); the JSON
`global_cmvn` file is used only when they are absent. A checkpoint whose shards carry no audio tensors (a
language-only directory) is refused.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from services.audio.encoder import WhaleAudioEncoder, sinusoid_table
from shared.checkpoint.dims import audio_dims
from shared.checkpoint.errors import CheckpointError
from shared.checkpoint.files import read_json, read_yaml
from shared.checkpoint.layout import (
    AUDIO_CMVN_FILE, AUDIO_CONFIG_FILE, AUDIO_PREFIX, CONFIG_FILE, audio_dir, vita_config,
)
from shared.checkpoint.strict import (
    ServicePlan, check_tensors, finish, load_into, materialize, module_shapes,
    non_persistent_buffers, on_meta, owned_shard_keys,
)
from shared.presets import AudioEncoderDims

CMVN_MEAN, CMVN_ISTD = "encoder.global_cmvn.mean", "encoder.global_cmvn.istd"
POS_TABLE = "encoder.enc.1.pos_table"  # the sinusoid table: computed, never stored (docs/MODEL.md#audio-encoder)
VAR_FLOOR = 1e-20  # whale/cmvn.py load_cmvn_json


def json_cmvn(path: Path, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mean = sum/count, var = sumsq/count − mean² (floored at 1e-20), istd = var^-½
    (docs/MODEL.md#audio-encoder)."""
    stats = read_json(path)
    if not isinstance(stats, dict):
        raise CheckpointError(path, None, "expected a JSON object with mean_stat, var_stat, frame_num")
    for key in ("mean_stat", "var_stat"):
        values = stats.get(key)
        if not isinstance(values, list) or len(values) != bins:
            raise CheckpointError(path, key, f"expected a list of {bins} numbers (input_dim)")
    count = stats.get("frame_num")
    if not isinstance(count, (int, float)) or count <= 0:
        raise CheckpointError(path, "frame_num", f"is {count!r}, expected a positive count")
    mean = [s / count for s in stats["mean_stat"]]
    var = [max(sq / count - m * m, VAR_FLOOR) for sq, m in zip(stats["var_stat"], mean)]
    istd = [1.0 / math.sqrt(v) for v in var]
    return torch.tensor(mean, dtype=torch.float64).float(), torch.tensor(istd, dtype=torch.float64).float()


def expected_shapes(dims: AudioEncoderDims) -> dict[str, tuple[int, ...]]:
    """Shard key -> shape the runtime model needs (CMVN buffers included)."""
    shapes = module_shapes(on_meta(lambda: WhaleAudioEncoder(dims), Path(AUDIO_CONFIG_FILE)))
    return {AUDIO_PREFIX + name: shape for name, shape in shapes.items()}


def _plan(root: Path):
    config_path = root / CONFIG_FILE
    config = vita_config(root)
    encoder_dir = audio_dir(root, config)
    train_yaml = encoder_dir / AUDIO_CONFIG_FILE
    train = read_yaml(train_yaml)
    if not isinstance(train, dict):
        raise CheckpointError(train_yaml, None, "expected a YAML mapping")
    dims = audio_dims(train, train_yaml, config, config_path)
    shards, owned = owned_shard_keys(root, "audio", f"{AUDIO_PREFIX}*", "audio encoder")
    skeleton = on_meta(lambda: WhaleAudioEncoder(dims), train_yaml)
    shapes = module_shapes(skeleton)
    names = {AUDIO_PREFIX + name: name for name in shapes}
    expected = {key: shapes[name] for key, name in names.items()}
    files = [config_path, train_yaml, shards.index_path]
    notes = [f"stand-alone {encoder_dir / 'final.pt'} is overridden by the shards and not read"]
    cmvn_in_shards = any(AUDIO_PREFIX + key in owned for key in (CMVN_MEAN, CMVN_ISTD))
    if not cmvn_in_shards:
        for key in (CMVN_MEAN, CMVN_ISTD):
            del expected[AUDIO_PREFIX + key]
        files.append(encoder_dir / AUDIO_CMVN_FILE)
        notes.append(f"CMVN from {encoder_dir / AUDIO_CMVN_FILE} (the shards hold no global_cmvn buffers)")
    found = shards.infos(owned)
    check_tensors(found, expected, missing_in=shards.index_path, shapes_from=f"{train_yaml} and {config_path}")
    files.extend(sorted({info.path for info in found.values()}))
    plan = ServicePlan("audio", {"audio": dims}, files, [found[key] for key in expected], notes=notes)
    cmvn_file = None if cmvn_in_shards else encoder_dir / AUDIO_CMVN_FILE
    if cmvn_file is not None:
        json_cmvn(cmvn_file, dims.num_mel_bins)  # checked now, before anything is loaded
    return plan, skeleton, shards, names, cmvn_file


def check_audio_checkpoint(root: Path) -> ServicePlan:
    return _plan(Path(root))[0]


def load_audio_checkpoint(root: Path, *, device: torch.device | str, dtype: torch.dtype) -> WhaleAudioEncoder:
    plan, skeleton, shards, names, cmvn_file = _plan(Path(root))
    computed = non_persistent_buffers(skeleton)
    if computed != {POS_TABLE}:
        raise CheckpointError(root, None, f"audio buffers the loader does not know how to compute: {sorted(computed - {POS_TABLE})}")
    dims = plan.dims["audio"]
    model = materialize(skeleton, device=device, dtype=dtype)
    tensors = [(names[key], tensor) for key, tensor in shards.read(info.key for info in plan.consumed)]
    if cmvn_file is not None:
        mean, istd = json_cmvn(cmvn_file, dims.num_mel_bins)
        tensors += [(CMVN_MEAN, mean), (CMVN_ISTD, istd)]
    load_into(model, tensors, source=shards.index_path)
    model.get_buffer(POS_TABLE).copy_(sinusoid_table(dims.pos_table_size, dims.attention_dim))
    return finish(model)

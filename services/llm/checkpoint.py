"""The LLM from the official VITA-1.5 directory: Qwen2 keys of the safetensors (docs/MODEL.md#checkpoints), dims from
config.json. Only the LLM's own tensors are read (selected by key from the index); the vision, projector and
audio tensors in the same shards belong to other services and are never materialised here."""

from __future__ import annotations

from pathlib import Path

import torch

from services.llm.model import Qwen2ForCausalLM
from shared.checkpoint.dims import llm_dims
from shared.checkpoint.errors import CheckpointError
from shared.checkpoint.files import ShardedSafetensors
from shared.checkpoint.layout import CONFIG_FILE, is_derived_buffer, shard_owner, vita_config
from shared.checkpoint.strict import (
    ServicePlan, check_index_keys, check_tensors, finish, load_into, materialize, module_shapes,
    non_persistent_buffers, on_meta,
)
from shared.presets import LLMDims


def expected_shapes(dims: LLMDims) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape the runtime model needs (runtime names are the HF names: no renaming)."""
    return module_shapes(on_meta(lambda: Qwen2ForCausalLM(dims), Path(CONFIG_FILE)))


def _plan(root: Path) -> tuple[ServicePlan, Qwen2ForCausalLM, ShardedSafetensors]:
    config_path = root / CONFIG_FILE
    dims = llm_dims(vita_config(root), config_path)
    shards = ShardedSafetensors(root)
    check_index_keys(shards)
    skeleton = on_meta(lambda: Qwen2ForCausalLM(dims), config_path)
    expected = module_shapes(skeleton)  # runtime names are the HF names: no renaming
    found = shards.infos(key for key in shards.keys() if shard_owner(key) == "llm")
    unused = check_tensors(found, expected, missing_in=shards.index_path, shapes_from=str(config_path), unused=is_derived_buffer)
    plan = ServicePlan(
        service="llm",
        dims={"llm": dims},
        files=[config_path, shards.index_path, *sorted({info.path for info in found.values()})],
        consumed=[found[key] for key in expected],
        unused=unused,
    )
    return plan, skeleton, shards


def check_llm_checkpoint(root: Path) -> ServicePlan:
    """Everything the LLM service would load, checked from configs and headers only."""
    return _plan(Path(root))[0]


def load_llm_checkpoint(root: Path, *, device: torch.device | str, dtype: torch.dtype) -> Qwen2ForCausalLM:
    plan, skeleton, shards = _plan(Path(root))
    if non_persistent_buffers(skeleton):
        raise CheckpointError(root, None, f"the LLM has buffers no checkpoint holds: {sorted(non_persistent_buffers(skeleton))}")
    model = materialize(skeleton, device=device, dtype=dtype)
    load_into(model, shards.read(info.key for info in plan.consumed), source=shards.index_path)
    return finish(model)

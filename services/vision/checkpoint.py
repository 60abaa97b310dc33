"""InternViT + projector from the official VITA-1.5 directory (docs/CHECKPOINTS.md).

Dims come from the InternViT directory's config.json and the VITA config.json (projector width); the
weights come from the VITA safetensors (`model.vision_tower.vision_tower.*`, `model.mm_projector.*`), which
override the stand-alone InternViT weights in the reference, so those are never read. A checkpoint
whose shards carry no vision tensors (a language-only directory) is refused: the vision service has nothing
to serve.
"""

from __future__ import annotations

from pathlib import Path

import torch

from services.vision.model import VisionEncoder
from shared.checkpoint.dims import vision_dims
from shared.checkpoint.errors import CheckpointError
from shared.checkpoint.files import ShardedSafetensors, read_json
from shared.checkpoint.layout import (
    CONFIG_FILE, PROJECTOR_PREFIX, VISION_CONFIG_FILE, VISION_PREFIX, vision_dir, vita_config,
)
from shared.checkpoint.strict import (
    ServicePlan, check_tensors, finish, load_into, materialize, module_shapes,
    non_persistent_buffers, on_meta, owned_shard_keys,
)
from shared.presets import VisionDims

_RUNTIME_TO_SHARD = {"vision_tower.": VISION_PREFIX, "mm_projector.": PROJECTOR_PREFIX}


def shard_key(runtime_name: str) -> str:
    for runtime_prefix, shard_prefix in _RUNTIME_TO_SHARD.items():
        if runtime_name.startswith(runtime_prefix):
            return shard_prefix + runtime_name[len(runtime_prefix):]
    raise KeyError(runtime_name)


def expected_shapes(dims: VisionDims) -> dict[str, tuple[int, ...]]:
    """Shard key -> shape the runtime model needs."""
    shapes = module_shapes(on_meta(lambda: VisionEncoder(dims), Path(VISION_CONFIG_FILE)))
    return {shard_key(name): shape for name, shape in shapes.items()}


def _plan(root: Path) -> tuple[ServicePlan, VisionEncoder, ShardedSafetensors, dict[str, str]]:
    config_path = root / CONFIG_FILE
    config = vita_config(root)
    tower_dir = vision_dir(root, config)
    tower_config = tower_dir / VISION_CONFIG_FILE
    dims = vision_dims(read_json(tower_config), tower_config, config, config_path)
    shards, owned = owned_shard_keys(root, "vision", f"{VISION_PREFIX}*", "vision tower or projector")
    skeleton = on_meta(lambda: VisionEncoder(dims), tower_config)
    shapes = module_shapes(skeleton)
    names = {shard_key(name): name for name in shapes}
    expected = {key: shapes[name] for key, name in names.items()}
    found = shards.infos(owned)
    check_tensors(found, expected, missing_in=shards.index_path, shapes_from=f"{tower_config} and {config_path}")
    plan = ServicePlan(
        service="vision",
        dims={"vision": dims},
        files=[config_path, tower_config, shards.index_path, *sorted({info.path for info in found.values()})],
        consumed=[found[key] for key in expected],
        notes=[f"stand-alone InternViT weights in {tower_dir} (if any) are overridden by the shards and not read"],
    )
    return plan, skeleton, shards, names


def check_vision_checkpoint(root: Path) -> ServicePlan:
    return _plan(Path(root))[0]


def load_vision_checkpoint(root: Path, *, device: torch.device | str, dtype: torch.dtype) -> VisionEncoder:
    plan, skeleton, shards, names = _plan(Path(root))
    if non_persistent_buffers(skeleton):
        raise CheckpointError(root, None, f"vision buffers no checkpoint holds: {sorted(non_persistent_buffers(skeleton))}")
    model = materialize(skeleton, device=device, dtype=dtype)
    tensors = ((names[key], tensor) for key, tensor in shards.read(info.key for info in plan.consumed))
    load_into(model, tensors, source=shards.index_path)
    return finish(model)

"""The one place that builds a ready-to-run vision model: seeded random weights or an official checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from services.vision.model import VisionEncoder
from shared.presets import VisionDims
from shared.random_weights import init_module_

# Stable names for the per-module generators: the tower and the projector are seeded independently, so
# that changing one's shape never changes the other's random values.
TOWER_SEED_NAME = "vision.vision_tower"
PROJECTOR_SEED_NAME = "vision.mm_projector"


def load_vision(
    dims: VisionDims,
    *,
    seed: int,
    device: torch.device | str,
    dtype: torch.dtype,
    checkpoint_dir: Path | None = None,
) -> VisionEncoder:
    """A `VisionEncoder` in eval mode without gradients, on `device` in `dtype`.

    With no `checkpoint_dir` the weights are random, seeded per module (identical in every process for
    the same seed). With `checkpoint_dir` (the VITA-1.5 directory) `dims` and `seed` are ignored: the
    dimensions come from the InternViT and VITA config files (the returned model's `.dims`) and the weights
    from the VITA safetensors (docs/CHECKPOINTS.md); an unusable checkpoint raises `shared.checkpoint.CheckpointError`.
    """
    if checkpoint_dir is not None:
        from services.vision.checkpoint import load_vision_checkpoint

        return load_vision_checkpoint(Path(checkpoint_dir), device=device, dtype=dtype)
    model = VisionEncoder(dims)
    init_module_(model.vision_tower, seed, TOWER_SEED_NAME)
    init_module_(model.mm_projector, seed, PROJECTOR_SEED_NAME)
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype).eval()

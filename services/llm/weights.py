"""The one way to obtain a ready LLM: seeded random weights (presets) or an official checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from services.llm.model import Qwen2ForCausalLM
from shared.presets import LLMDims
from shared.random_weights import init_module_, llm_embedding_table

# Seed-stream names: changing one changes the random weights of every deployment, so they are fixed.
_LAYER_STREAM = "llm.layers.{index}"
_NORM_STREAM = "llm.norm"
_LM_HEAD_STREAM = "llm.lm_head"


def load_llm(
    dims: LLMDims,
    *,
    seed: int,
    device: str | torch.device,
    dtype: torch.dtype,
    checkpoint_dir: Path | None = None,
) -> Qwen2ForCausalLM:
    """An eval-mode, grad-free Qwen2 on `device` in `dtype`.

    Without a checkpoint every tensor is seeded: `model.embed_tokens` is `llm_embedding_table(dims, seed)`
    (the speech service derives the same table), and every other module draws from its own named stream,
    so the weights do not depend on the device, the dtype or the order modules are built in.

    With `checkpoint_dir` (the VITA-1.5 directory) `dims` and `seed` are ignored: the dimensions come from
    the checkpoint's config.json (the returned model's `.dims`) and the weights from its safetensors; a
    checkpoint that cannot be served raises `shared.checkpoint.CheckpointError` naming the file and key.
    """
    if checkpoint_dir is not None:
        from services.llm.checkpoint import load_llm_checkpoint

        return load_llm_checkpoint(Path(checkpoint_dir), device=device, dtype=dtype)

    # Built on the meta device: default nn.Linear init of the full preset (7.6B parameters) would take
    # minutes only to be overwritten.
    with torch.device("meta"):
        model = Qwen2ForCausalLM(dims)
    model = model.to(dtype=dtype).to_empty(device=device)

    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(llm_embedding_table(dims, seed))
        for index, layer in enumerate(model.model.layers):
            init_module_(layer, seed, _LAYER_STREAM.format(index=index))
        init_module_(model.model.norm, seed, _NORM_STREAM)
        init_module_(model.lm_head, seed, _LM_HEAD_STREAM)

    model.eval()
    model.requires_grad_(False)
    return model

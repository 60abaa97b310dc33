"""Seeded random initialisation shared by services that must agree on weights.

Random weights are honest for the tiny preset (every reply says so), but two processes that hold the same
tensor must hold identical values: the speech service keeps its own copy of the LLM input-embedding table
(docs/MODEL.md#speech-input), and the distributed stack must equal the in-process one bit for bit. Every random tensor
therefore comes from a generator seeded per module name, never from the global RNG.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from shared.presets import LLMDims

INIT_STD = 0.02


def module_generator(base_seed: int, module_name: str) -> torch.Generator:
    """A CPU generator whose seed depends on the preset seed and a stable module name."""
    digest = hashlib.sha256(f"{base_seed}:{module_name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def llm_embedding_table(dims: LLMDims, base_seed: int) -> torch.Tensor:
    """`model.embed_tokens.weight` [vocab, hidden] in fp32; identical in every process."""
    gen = module_generator(base_seed, "llm.embed_tokens")
    return torch.randn(dims.vocab_size, dims.hidden_size, generator=gen) * INIT_STD


def init_module_(module: nn.Module, base_seed: int, module_name: str) -> nn.Module:
    """Re-initialise every parameter of `module` deterministically, in name order.

    Matrices get N(0, 0.02); vectors named like norms or scales get 1; other vectors (biases) get 0;
    this keeps random networks numerically tame (no NaN/inf) at any depth.
    """
    gen = module_generator(base_seed, module_name)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
            leaf = name.rsplit(".", 1)[-1]
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * INIT_STD)
            elif "norm" in name or leaf in ("weight", "ls1", "ls2", "weight_g"):
                param.fill_(1.0)
            else:
                param.zero_()
    return module

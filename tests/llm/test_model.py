"""The Qwen2 model: names, seeded loading, and cache paths that must equal the no-cache forward."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from services.llm.model import KV_BLOCK_TOKENS, KVCache, Qwen2ForCausalLM
from services.llm.weights import load_llm
from shared.checkpoint import CheckpointError
from shared.presets import TINY
from shared.random_weights import llm_embedding_table
from tests.llm.helpers import SEED, SMALL_DIMS, prompt_ids

ATOL = 1e-4


def _embed(model: Qwen2ForCausalLM, ids: tuple[int, ...] | list[int]) -> torch.Tensor:
    return model.embed(torch.tensor(ids, dtype=torch.int64))


def test_tiny_preset_loads_with_hf_names_and_shared_embedding() -> None:
    dims = TINY.llm
    model = load_llm(dims, seed=SEED, device="cpu", dtype=torch.float32)
    names = set(model.state_dict())
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(dims.num_layers):
        prefix = f"model.layers.{i}."
        expected |= {prefix + f"self_attn.{p}_proj.{t}" for p in "qkv" for t in ("weight", "bias")}
        expected |= {prefix + "self_attn.o_proj.weight", prefix + "input_layernorm.weight",
                     prefix + "post_attention_layernorm.weight"}
        expected |= {prefix + f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    assert names == expected
    assert model.lm_head.weight.shape == (dims.vocab_size, dims.hidden_size)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (dims.num_kv_heads * dims.head_dim, dims.hidden_size)
    # The speech service derives the same table from the same seed.
    assert torch.equal(model.model.embed_tokens.weight, llm_embedding_table(dims, SEED))
    assert not any(p.requires_grad for p in model.parameters())


def test_load_is_deterministic_and_follows_dtype(model: Qwen2ForCausalLM) -> None:
    again = load_llm(SMALL_DIMS, seed=SEED, device="cpu", dtype=torch.bfloat16)
    assert again.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16), b), name
    other = load_llm(dataclasses.replace(SMALL_DIMS, num_layers=1), seed=SEED + 1, device="cpu",
                     dtype=torch.float32)
    assert not torch.equal(other.lm_head.weight, model.lm_head.weight)


def test_a_directory_without_a_checkpoint_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_llm(SMALL_DIMS, seed=SEED, device="cpu", dtype=torch.float32, checkpoint_dir=tmp_path)


def test_incremental_cache_equals_full_forward(model: Qwen2ForCausalLM) -> None:
    """Chunked prefill, then one-token decodes across a cache block boundary (forcing a regrow)."""
    ids = prompt_ids(KV_BLOCK_TOKENS + 12)
    reference = model(_embed(model, ids)[None])[0]
    cache = KVCache(SMALL_DIMS, device="cpu", dtype=torch.float32, capacity=1)
    position = 0
    for chunk in (1, 100, 140):
        logits = model.prefill(_embed(model, ids[position : position + chunk]), cache)
        position += chunk
        torch.testing.assert_close(logits, reference[position - 1], atol=ATOL, rtol=0)
    while position < len(ids):
        logits = model.decode(_embed(model, ids[position : position + 1]), [cache])
        torch.testing.assert_close(logits[0], reference[position], atol=ATOL, rtol=0)
        position += 1
    assert cache.length == len(ids)
    assert cache.capacity == 2 * KV_BLOCK_TOKENS


def test_batched_decode_equals_each_sequence_alone(model: Qwen2ForCausalLM) -> None:
    prompts = [prompt_ids(5, 1), prompt_ids(9, 2), prompt_ids(14, 3)]
    steps = 6

    def greedy(prompt_set: list[tuple[int, ...]]) -> tuple[list[list[int]], list[torch.Tensor]]:
        caches = [model.new_cache(32) for _ in prompt_set]
        last = [int(model.prefill(_embed(model, p), c).argmax()) for p, c in zip(prompt_set, caches)]
        tokens = [[t] for t in last]
        all_logits = []
        for _ in range(steps):
            logits = model.decode(_embed(model, last), caches)
            all_logits.append(logits)
            last = logits.argmax(-1).tolist()
            for seq, token in zip(tokens, last):
                seq.append(token)
        return tokens, all_logits

    batched_tokens, batched_logits = greedy(prompts)
    for index, prompt in enumerate(prompts):
        alone_tokens, alone_logits = greedy([prompt])
        assert batched_tokens[index] == alone_tokens[0]
        for step in range(steps):
            torch.testing.assert_close(batched_logits[step][index], alone_logits[step][0], atol=ATOL, rtol=0)


def test_matches_transformers_qwen2(model: Qwen2ForCausalLM) -> None:
    """Same state dict in HF's Qwen2 gives the same logits: names, RoPE, GQA and biases agree."""
    transformers = pytest.importorskip("transformers")
    dims = SMALL_DIMS
    config = transformers.Qwen2Config(
        vocab_size=dims.vocab_size, hidden_size=dims.hidden_size, intermediate_size=dims.intermediate_size,
        num_hidden_layers=dims.num_layers, num_attention_heads=dims.num_heads,
        num_key_value_heads=dims.num_kv_heads, head_dim=dims.head_dim, rms_norm_eps=dims.rms_norm_eps,
        max_position_embeddings=dims.max_position_embeddings, tie_word_embeddings=False,
        rope_theta=dims.rope_theta, rope_parameters={"rope_type": "default", "rope_theta": dims.rope_theta},
    )
    hf = transformers.Qwen2ForCausalLM(config).eval()
    # Random biases and larger attention weights so that a wrong RoPE or head grouping shows.
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    for name, tensor in state.items():
        if name.endswith("bias"):
            tensor.normal_(0.0, 0.5, generator=generator)
        elif ".self_attn." in name:
            tensor.mul_(8.0)
    hf.load_state_dict(state, strict=True)
    ours = Qwen2ForCausalLM(dims)
    ours.load_state_dict(state, strict=True)
    ids = torch.tensor([prompt_ids(40, 5), prompt_ids(40, 6)])
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
    torch.testing.assert_close(ours(ours.embed(ids)), expected, atol=ATOL, rtol=0)


def test_kv_cache_grows_in_blocks_and_copies_keep_the_prefix() -> None:
    cache = KVCache(SMALL_DIMS, device="cpu", dtype=torch.float32, capacity=10)
    assert cache.capacity == KV_BLOCK_TOKENS
    cache.keys[:, :, :5] = 1.0
    cache.values[:, :, :5] = 2.0
    cache.length = 5
    cache.reserve(KV_BLOCK_TOKENS + 1)  # doubles rather than growing by one
    assert cache.capacity == 2 * KV_BLOCK_TOKENS
    assert bool((cache.keys[:, :, :5] == 1.0).all()) and bool((cache.values[:, :, :5] == 2.0).all())
    copy = cache.clone_prefix(3, capacity=4)
    assert (copy.length, copy.capacity) == (3, KV_BLOCK_TOKENS)
    copy.keys.zero_()
    assert bool((cache.keys[:, :, :5] == 1.0).all())  # private storage
    cache.shrink_to_fit()
    assert cache.capacity == KV_BLOCK_TOKENS and bool((cache.keys[:, :, :5] == 1.0).all())
    cache.truncate(2)
    assert cache.length == 2
    with pytest.raises(ValueError):
        cache.truncate(3)

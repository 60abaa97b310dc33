"""Qwen2 decoder in plain torch (docs/MODEL.md#llm-dims), shaped for serving.

Parameter names equal the Hugging Face names (`model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.bias`,
`lm_head.weight`, ...) so that an official state dict loads with `load_state_dict` and no renaming.

Besides the usual full causal forward (used as the no-cache reference), the model offers the two calls a
serving engine needs:

* `prefill(embeds, cache)`: one chunk of new input rows of ONE sequence, appended to its KV cache;
* `decode(embeds, caches)`: one new row for each of B sequences whose caches have different lengths. Every
  matmul (q/k/v/o, MLP, lm_head) runs once for the whole batch; only attention runs per sequence, over that
  sequence's own cache (see `decode` for why).

Nothing here knows about sessions, requests or gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from shared.presets import LLMDims

# Caches grow in whole blocks: a turn reserves prompt + reply once, so decode never reallocates, and
# the allocator sees a few sizes instead of one per length.
KV_BLOCK_TOKENS = 256

# attend(layer_index, q [N, heads, head_dim], k [N, kv_heads, head_dim], v) -> [N, heads * head_dim]
AttendFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class KVCache:
    """Keys and values of one sequence for every layer, each [layers, kv_heads, capacity, head_dim].

    The first `length` positions are valid; positions past it are scratch that the next write overwrites,
    which is what makes `truncate` free.
    """

    def __init__(self, dims: LLMDims, *, device: torch.device | str, dtype: torch.dtype, capacity: int):
        self.dims = dims
        capacity = _round_up(max(capacity, 1), KV_BLOCK_TOKENS)
        shape = (dims.num_layers, dims.num_kv_heads, capacity, dims.head_dim)
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def reserve(self, tokens: int) -> None:
        """Make room for `tokens` positions in total. Growth at least doubles, so callers that reserve
        one more position at a time still pay amortised O(1) copies."""
        if tokens <= self.capacity:
            return
        new_capacity = _round_up(max(tokens, 2 * self.capacity), KV_BLOCK_TOKENS)
        self.keys = self._grown(self.keys, new_capacity)
        self.values = self._grown(self.values, new_capacity)

    def _grown(self, old: torch.Tensor, capacity: int) -> torch.Tensor:
        """A tensor of `capacity` positions holding the valid prefix of `old`."""
        layers, kv_heads, _, head_dim = old.shape
        new = torch.empty((layers, kv_heads, capacity, head_dim), device=old.device, dtype=old.dtype)
        new[:, :, : self.length] = old[:, :, : self.length]
        return new

    def shrink_to_fit(self) -> None:
        """Give back whole unused blocks (e.g. the unused part of a reply reservation) before the cache
        sits idle, so an idle cache costs at most one block beyond its length."""
        fitted = _round_up(max(self.length, 1), KV_BLOCK_TOKENS)
        if fitted < self.capacity:
            self.keys = self._grown(self.keys, fitted)
            self.values = self._grown(self.values, fitted)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length

    def clone_prefix(self, length: int, *, capacity: int) -> KVCache:
        """A private copy of the first `length` positions, with room for `capacity` positions."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot copy {length} positions from a cache of {self.length}")
        copy = KVCache(self.dims, device=self.keys.device, dtype=self.keys.dtype, capacity=max(capacity, length))
        copy.keys[:, :, :length] = self.keys[:, :, :length]
        copy.values[:, :, :length] = self.values[:, :, :length]
        copy.length = length
        return copy


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Variance in fp32 as in HF Qwen2: bf16 squares of a 3584-wide residual lose too much.
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [N, head_dim] for int positions [N]; angles in fp32 as in HF, then cast.

    Computed per forward instead of kept as a buffer so that a model built on the meta device needs no
    buffer fix-up, and one computation serves every layer of the step.
    """
    exponent = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, head_dim]; cos/sin [N, head_dim]."""
    cos = cos[:, None, :]
    sin = sin[:, None, :]
    return x * cos + _rotate_half(x) * sin


class Qwen2Attention(nn.Module):
    def __init__(self, dims: LLMDims):
        super().__init__()
        self.num_heads = dims.num_heads
        self.num_kv_heads = dims.num_kv_heads
        self.head_dim = dims.head_dim
        self.q_proj = nn.Linear(dims.hidden_size, dims.num_heads * dims.head_dim, bias=True)
        self.k_proj = nn.Linear(dims.hidden_size, dims.num_kv_heads * dims.head_dim, bias=True)
        self.v_proj = nn.Linear(dims.hidden_size, dims.num_kv_heads * dims.head_dim, bias=True)
        self.o_proj = nn.Linear(dims.num_heads * dims.head_dim, dims.hidden_size, bias=False)

    def qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, hidden] -> q [N, heads, head_dim], k and v [N, kv_heads, head_dim], RoPE applied."""
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


class Qwen2MLP(nn.Module):
    def __init__(self, dims: LLMDims):
        super().__init__()
        self.gate_proj = nn.Linear(dims.hidden_size, dims.intermediate_size, bias=False)
        self.up_proj = nn.Linear(dims.hidden_size, dims.intermediate_size, bias=False)
        self.down_proj = nn.Linear(dims.intermediate_size, dims.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, dims: LLMDims):
        super().__init__()
        self.input_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)
        self.self_attn = Qwen2Attention(dims)
        self.post_attention_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)
        self.mlp = Qwen2MLP(dims)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Callable[..., torch.Tensor]
    ) -> torch.Tensor:
        q, k, v = self.self_attn.qkv(self.input_layernorm(x), cos, sin)
        x = x + self.self_attn.o_proj(attend(q, k, v))
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    def __init__(self, dims: LLMDims):
        super().__init__()
        self.embed_tokens = nn.Embedding(dims.vocab_size, dims.hidden_size)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(dims) for _ in range(dims.num_layers))
        self.norm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)


class Qwen2ForCausalLM(nn.Module):
    """The LLM. Rows in and out are 2-D ([positions, hidden]) except in the reference `forward`."""

    def __init__(self, dims: LLMDims):
        super().__init__()
        self.dims = dims
        self.model = Qwen2Model(dims)
        self.lm_head = nn.Linear(dims.hidden_size, dims.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.dims, device=self.device, dtype=self.dtype, capacity=capacity)

    @torch.inference_mode()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [...] -> input rows [..., hidden]."""
        return self.model.embed_tokens(ids)

    def _run_layers(self, x: torch.Tensor, positions: torch.Tensor, attend: AttendFn) -> torch.Tensor:
        cos, sin = rope_cos_sin(positions, self.dims.head_dim, self.dims.rope_theta, x.dtype)
        for index, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, lambda q, k, v, index=index: attend(index, q, k, v))
        return self.model.norm(x)

    @torch.inference_mode()
    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Reference causal forward without a cache: [B, T, hidden] -> logits [B, T, vocab]."""
        batch, length, hidden = inputs_embeds.shape
        positions = torch.arange(length, device=inputs_embeds.device).repeat(batch)

        def attend(_: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # [B*T, heads, D] -> [B, heads, T, D]
            q, k, v = (t.view(batch, length, t.shape[1], t.shape[2]).transpose(1, 2) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return out.transpose(1, 2).reshape(batch * length, -1)

        x = self._run_layers(inputs_embeds.reshape(batch * length, hidden), positions, attend)
        return self.lm_head(x).view(batch, length, -1)

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append rows [T, hidden] of one sequence to `cache`; return the logits [vocab] of the last row.

        Only the last row goes through lm_head: the others' logits are never used and, at 152k vocab,
        would cost more than the layers for a short chunk.
        """
        start = cache.length
        count = embeds.shape[0]
        end = start + count
        cache.reserve(end)
        positions = torch.arange(start, end, device=embeds.device)
        # Query i sits at position start + i and sees keys 0..start + i.
        mask = None
        if start > 0:
            mask = torch.ones(count, end, dtype=torch.bool, device=embeds.device).tril(diagonal=start)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys = cache.keys[layer]
            values = cache.values[layer]
            keys[:, start:end] = k.transpose(0, 1)
            values[:, start:end] = v.transpose(0, 1)
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1)[None],
                keys[None, :, :end],
                values[None, :, :end],
                attn_mask=mask,
                is_causal=mask is None,
                enable_gqa=True,
            )
            return out[0].transpose(0, 1).reshape(count, -1)

        x = self._run_layers(embeds, positions, attend)
        cache.length = end
        return self.lm_head(x[-1])

    @torch.inference_mode()
    def decode(self, embeds: torch.Tensor, caches: Sequence[KVCache]) -> torch.Tensor:
        """One new row per sequence: embeds [B, hidden], caches[i] of any length -> logits [B, vocab].

        Attention loops over the sequences, each attending to its own cache view. Session caches outlive
        the batch (they are reused across turns), so a padded batched attention would first have to copy
        every cache into a [B, kv_heads, max_len, D] tensor on every step and layer, reading all KV twice;
        the loop adds B small kernels per layer instead, which is small next to the batched matmuls that
        dominate a step. A paged/varlen kernel can replace this loop behind the same signature.
        """
        if embeds.shape[0] != len(caches):
            raise ValueError(f"{embeds.shape[0]} rows for {len(caches)} caches")
        lengths = [cache.length for cache in caches]
        for cache, length in zip(caches, lengths):
            cache.reserve(length + 1)
        positions = torch.tensor(lengths, dtype=torch.int64).to(embeds.device, non_blocking=True)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            outputs = []
            for row, (cache, length) in enumerate(zip(caches, lengths)):
                keys = cache.keys[layer]
                values = cache.values[layer]
                keys[:, length] = k[row]
                values[:, length] = v[row]
                out = F.scaled_dot_product_attention(
                    q[row][None, :, None, :],
                    keys[None, :, : length + 1],
                    values[None, :, : length + 1],
                    enable_gqa=True,
                )
                outputs.append(out.reshape(-1))
            return torch.stack(outputs)

        x = self._run_layers(embeds, positions, attend)
        for cache, length in zip(caches, lengths):
            cache.length = length + 1
        return self.lm_head(x)

"""TTS decoder `LLM2TTSCodecAR` (docs/MODEL.md#tts) in plain torch: NAR pre-net + autoregressive codec-token LM.

Text frames [1, 4n, d] → bidirectional pre-net → [BOS, h] prefilled into a KV cache (bidirectional inside
the prefill) → one codec token per decode step, SOS first. Parameter names follow the official
`decoder/final.pt` (docs/MODEL.md#checkpoints) so that it loads strictly; `layers_prefix` exists only for that reason
(VITA always passes prefix=None, so it is never run).

The decode step takes several streams at once (one row each) so the engine can batch the Linear layers;
attention runs per stream over that stream's own cache (see `TTSDecoder.decode_step`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from shared.presets import TTSDims

# Special ids appended after the codec vocabulary (docs/MODEL.md#tts).
SPECIAL_TOKENS = 4
BOS_OFFSET, SOS_OFFSET, EOS_OFFSET, PAD_OFFSET = 0, 1, 2, 3
TOP_K = 2  # `decoder_topk` of the reference server
TEMPERATURE = 1.0


def bos_id(dims: TTSDims) -> int:
    return dims.codec_vocab + BOS_OFFSET


def sos_id(dims: TTSDims) -> int:
    return dims.codec_vocab + SOS_OFFSET


def eos_id(dims: TTSDims) -> int:
    return dims.codec_vocab + EOS_OFFSET


def pad_id(dims: TTSDims) -> int:
    return dims.codec_vocab + PAD_OFFSET


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and scale in the input dtype, as HF LlamaRMSNorm does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [P, head_dim] for the rotate-half RoPE (dim i pairs with dim i + head_dim/2)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class KVCache:
    """Keys/values of one stream's AR stack, preallocated to the segment's worst-case length."""

    def __init__(
        self, num_layers: int, num_heads: int, head_dim: int, capacity: int, *, dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (num_layers, num_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.length = 0  # positions filled; equal for every layer between steps

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys/values: [heads, T, head_dim] for positions start … start+T−1."""
        end = start + keys.shape[1]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: position {end} > capacity {self.capacity}")
        self.keys[layer, :, start:end] = keys
        self.values[layer, :, start:end] = values

    def view(self, layer: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer, :, :length], self.values[layer, :, :length]


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [..., T, d] → q, k, v [..., heads, T, head_dim], RoPE applied to q and k."""
        *lead, length, _ = x.shape
        shape = (*lead, length, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(-3, -2)
        k = self.k_proj(x).view(shape).transpose(-3, -2)
        v = self.v_proj(x).view(shape).transpose(-3, -2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    """One HF-Llama decoder layer (pre-norm attention + SwiGLU), parameter names as in HF."""

    def __init__(self, dims: TTSDims):
        super().__init__()
        self.self_attn = SelfAttention(dims.hidden_size, dims.num_heads)
        self.mlp = SwiGLU(dims.hidden_size, dims.intermediate_size)
        self.input_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)

    def forward_full(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bidirectional self-attention over the whole sequence x [1, T, d] (no mask).

        Returns the layer output and the rotated keys / values [1, heads, T, head_dim] for a cache.
        """
        batch, length, hidden = x.shape
        q, k, v = self.self_attn.project(self.input_layernorm(x), cos, sin)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        x = x + self.self_attn.o_proj(attn.transpose(1, 2).reshape(batch, length, hidden))
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v

    def forward_step(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        caches: Sequence[KVCache | None],
        layer_index: int,
    ) -> torch.Tensor:
        """One new position per row. x [M, d]; cos/sin [M, head_dim]; caches[row] None = padding row."""
        rows, hidden = x.shape
        # q/k/v: [M, heads, 1, head_dim]; each row rotated by its own position.
        q, k, v = self.self_attn.project(
            self.input_layernorm(x)[:, None, :], cos[:, None, None, :], sin[:, None, None, :]
        )
        attn = torch.zeros_like(q)
        for row, cache in enumerate(caches):
            if cache is None:
                continue
            position = cache.length
            cache.write(layer_index, position, k[row], v[row])
            keys, values = cache.view(layer_index, position + 1)
            # Every cached position is visible: the prefill block and all earlier decode steps.
            attn[row] = F.scaled_dot_product_attention(q[row], keys, values, is_causal=False)
        x = x + self.self_attn.o_proj(attn.reshape(rows, hidden))
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class TTSDecoder(nn.Module):
    """`LLM2TTSCodecAR` inference path. State-dict keys = the official `decoder/final.pt` keys."""

    def __init__(self, dims: TTSDims):
        super().__init__()
        self.dims = dims
        vocab = dims.codec_vocab + SPECIAL_TOKENS
        self.embedding = nn.Embedding(vocab, dims.hidden_size, padding_idx=pad_id(dims))
        self.layers_pre_nn = nn.ModuleList(LlamaLayer(dims) for _ in range(dims.pre_net_layers))
        self.layers = nn.ModuleList(LlamaLayer(dims) for _ in range(dims.num_blocks))
        # Present in the official checkpoint (kv_cache_prefix_finetune = 1) but never run: prefix is None.
        self.layers_prefix = nn.ModuleList(LlamaLayer(dims) for _ in range(dims.num_blocks))
        self.norm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)
        self.out_fnn = nn.Linear(dims.hidden_size, vocab, bias=True)

    @property
    def head_dim(self) -> int:
        return self.dims.hidden_size // self.dims.num_heads

    @property
    def vocab_size(self) -> int:
        return self.out_fnn.out_features

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype (bf16 on accelerators, fp32 on CPU)."""
        return self.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary_cos_sin(positions, self.head_dim, self.dims.rope_theta, self.dtype)

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(
            len(self.layers), self.dims.num_heads, self.head_dim, capacity, dtype=self.dtype, device=self.device
        )

    def pre_net(self, frames: torch.Tensor) -> torch.Tensor:
        """NAR pre-net: frames [1, 4n, d] at positions 0 … 4n−1, full attention, no final norm."""
        positions = torch.arange(frames.shape[1], device=frames.device)
        cos, sin = self._rotary(positions)
        hidden = frames
        for layer in self.layers_pre_nn:
            hidden, _, _ = layer.forward_full(hidden, cos, sin)
        return hidden

    def prefill(self, text_hidden: torch.Tensor, cache: KVCache) -> None:
        """Fill `cache` with [Emb(BOS), text_hidden] at positions 0 … 4n.

        Non-causal on purpose (docs/MODEL.md#tts): the reference runs eager attention with attention_mask=None,
        i.e. every prefill position sees the whole prefix, as in training. Its outputs are not sampled
        from; the first logits come from the SOS step.
        """
        self._run_prefill(text_hidden, cache)

    def prefill_outputs(self, text_hidden: torch.Tensor) -> torch.Tensor:
        """The prefill's last hidden states [1, 4n+1, d]: unused when serving, inspected by tests."""
        return self._run_prefill(text_hidden, None)

    def _run_prefill(self, text_hidden: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        bos = torch.full((1, 1), bos_id(self.dims), dtype=torch.long, device=text_hidden.device)
        hidden = torch.cat([self.embedding(bos), text_hidden], dim=1)
        cos, sin = self._rotary(torch.arange(hidden.shape[1], device=hidden.device))
        for index, layer in enumerate(self.layers):
            hidden, keys, values = layer.forward_full(hidden, cos, sin)
            if cache is not None:
                cache.write(index, 0, keys[0], values[0])
        if cache is not None:
            cache.length = hidden.shape[1]
        return hidden

    def decode_step(self, tokens: torch.Tensor, caches: Sequence[KVCache | None]) -> torch.Tensor:
        """One AR step for M rows: tokens [M] (the previous token, SOS first) → logits [M, vocab] fp32.

        Each active row's token goes at position cache.length and attends to every cached position of
        its own stream. Rows whose cache is None are padding: their outputs are garbage and ignored.
        The Linear layers always see the full [M, d] batch: with a fixed M, a row's result does not depend
        on which other rows are filled (see engine.py, "batch invariance").
        """
        if tokens.shape[0] != len(caches):
            raise ValueError(f"{tokens.shape[0]} tokens for {len(caches)} cache slots")
        positions = torch.tensor([c.length if c is not None else 0 for c in caches], device=tokens.device)
        cos, sin = self._rotary(positions)
        hidden = self.embedding(tokens)
        for index, layer in enumerate(self.layers):
            hidden = layer.forward_step(hidden, cos, sin, caches, index)
        for cache in caches:
            if cache is not None:
                cache.length += 1
        return self.out_fnn(self.norm(hidden)).float()


def text_frames(text_embeddings: torch.Tensor, frame_dim: int) -> torch.Tensor:
    """LLM input embeddings [n, 4·d] → TTS input frames [1, 4n, d], row-major (docs/MODEL.md#speech-input)."""
    rows, width = text_embeddings.shape
    if width % frame_dim:
        raise ValueError(f"embedding width {width} is not a multiple of the TTS frame size {frame_dim}")
    return text_embeddings.reshape(1, rows * (width // frame_dim), frame_dim)


def banned_sample_ids(dims: TTSDims) -> tuple[int, ...]:
    """Ids that must never be sampled: BOS, SOS and PAD are no codec code (the codec table has
    `codec_vocab` rows) and would crash or corrupt the codec (docs/MODEL.md#d-tts-specials); EOS stays
    allowed (it stops)."""
    return (bos_id(dims), sos_id(dims), pad_id(dims))


def sample_codec_token(
    logits: torch.Tensor,
    generator: torch.Generator,
    banned_ids: Sequence[int],
    *,
    top_k: int = TOP_K,
    temperature: float = TEMPERATURE,
) -> int:
    """The reference rule: softmax(logits / T) → keep top-k → renormalise → ONE torch.multinomial call.

    Decision (docs/MODEL.md#d-tts-specials): the reference has no guard against sampling BOS/SOS/PAD; here their logits
    are set to −inf before top-k, so a special id can never reach the codec. When no special id is in
    the top-k (the normal case) the kept ids and their renormalised probabilities are the reference's.
    Exactly one draw from `generator` per step, so a seeded stream is reproducible.
    """
    if logits.dim() != 1:
        raise ValueError(f"expected logits [vocab], got {tuple(logits.shape)}")
    masked = logits.float().clone()
    masked[list(banned_ids)] = -math.inf
    probs = torch.softmax(masked / temperature, dim=-1)
    top_probs, top_ids = torch.topk(probs, top_k)
    kept = torch.zeros_like(probs).scatter_(0, top_ids, top_probs)
    kept = kept / kept.sum()
    return int(torch.multinomial(kept, 1, generator=generator).item())


def max_codec_tokens_for(
    text_tokens: int, *, per_text_token: int, base_tokens: int, hard_cap: int
) -> int:
    """Length cap for one segment: min(hard_cap, per_text_token · n + base_tokens).

    The reference only caps at 1000 tokens (25 s). A model that misses EOS would then babble for 25 s
    after a two-word segment; speech runs at ~2–4 text tokens per second, i.e. ≤ ~20 codec tokens (40 Hz)
    per text token, so 25 per token + 1 s of slack never truncates real speech but bounds a runaway.
    """
    return min(hard_cap, per_text_token * text_tokens + base_tokens)
